namespace EmaGen.Dcp;

/// <summary>
/// What the metadata declares for a tensor item (dtype name and shape), checked against the item's own pickle before
/// any tensor memory is allocated; <see cref="Any"/> only requires a tensor.
/// </summary>
internal sealed record TensorExpectation(string? DType, long[]? Shape)
{
    public static readonly TensorExpectation Any = new(null, null);
}
