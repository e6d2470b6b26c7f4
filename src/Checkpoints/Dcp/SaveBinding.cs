namespace EmaGen.Dcp;

/// <summary>
/// Which save the items read from one folder must come from. EmaGen seals every item with its save id (see
/// <see cref="ItemSeal"/>): every sealed item must carry the metadata's save id (or, where the metadata keeps none,
/// the id of the first item read), and a folder may not mix sealed and unsealed items. A data file copied in from
/// another save therefore fails instead of loading as a blend of two states.
/// </summary>
internal sealed class SaveBinding
{
    private readonly string _directory;
    private string? _saveId;
    private bool? _sealed;

    public SaveBinding(string directory, string? metadataSaveId)
    {
        _directory = directory;
        _saveId = metadataSaveId;
    }

    public void Check(ItemSeal? seal, string source)
    {
        bool isSealed = seal is not null;
        if (_sealed is { } expected && expected != isSealed)
        {
            throw new CheckpointFormatException(isSealed
                ? $"{source}: this item is sealed by an EmaGen save, earlier items of {_directory} are not; the folder mixes files of different saves."
                : $"{source}: this item has no EmaGen seal, earlier items of {_directory} do; the folder mixes files of different saves.");
        }
        _sealed = isSealed;
        if (seal is null) return;
        _saveId ??= seal.SaveId;
        if (seal.SaveId != _saveId)
        {
            throw new CheckpointFormatException(
                $"{source}: the item belongs to save '{seal.SaveId}', the checkpoint's metadata to save '{_saveId}'; a data file was copied in from another save.");
        }
    }
}
