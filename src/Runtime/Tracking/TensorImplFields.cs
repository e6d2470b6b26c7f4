using System;
using System.Runtime.Intrinsics.X86;
using TorchSharp;

namespace EmaGen;

/// <summary>
/// The fields of a LibTorch <c>c10::TensorImpl</c> that make its data pointer (its StorageImpl, that storage's data, the
/// storage offset and the dtype), its element count and its layout flags, as read straight from memory, so that the
/// per-step check can ask "still where it was, as large and laid out the same?" of a tensor it holds a handle of its
/// own to with two or three cache lines and no call into LibTorch. The count matters: <c>data_ptr()</c> answers null for
/// an emptied tensor whatever its offset, and a tensor shrunk in place keeps its pointer; either must reach the check's
/// re-check, which throws. So do the flags: a <c>set_()</c> onto the same place and size with other strides keeps the
/// pointer and the count, but not <c>is_contiguous_</c>, and the re-check then sends the tensor to the strided path.
/// <para>
/// The offsets are LibTorch 2.10's (what TorchSharp 0.107 ships): <c>storage_</c> right after the 16-byte
/// <c>intrusive_ptr_target</c> header, <c>storage_offset_</c> at 152, <c>numel_</c> at 160, <c>data_type_</c> at 168 followed by
/// <c>device_opt_</c> and the first bytes of layout flags (<c>is_contiguous_</c> among them) up to 176, and the StorageImpl's
/// data pointer at 16. Nothing trusts them unproven: <see cref="LayoutHolds"/> checks them once against tensors made for the
/// purpose, and a <see cref="TensorImplFields"/> is only taken when its fields give exactly the data pointer LibTorch
/// returned for that tensor. Another layout therefore takes no snapshot, and the check calls LibTorch as before.
/// </para>
/// </summary>
internal readonly unsafe struct TensorImplFields
{
    private const int StorageAt = 16;
    private const int StorageOffsetAt = 152;
    private const int NumelAt = 160;
    private const int DataTypeAt = 168;
    // The dtype, the device and the first layout flags, compared as one word where the flags are shown to follow the
    // dtype (else the dtype alone).
    private const int TypeAndFlagsBytes = 8;
    private const int StorageDataAt = 16;

    private readonly byte* _impl;
    private readonly byte* _storage;
    private readonly long _storageOffset;
    private readonly long _numel;
    private readonly ulong _typeAndFlags;
    private readonly byte* _data;

    private TensorImplFields(byte* impl)
    {
        _impl = impl;
        _storage = *(byte**)(impl + StorageAt);
        _storageOffset = *(long*)(impl + StorageOffsetAt);
        _numel = ReadNumel(impl);
        _typeAndFlags = ReadTypeAndFlags(impl);
        _data = _storage == null ? null : *(byte**)(_storage + StorageDataAt);
    }

    /// <summary>Whether this was read from a TensorImpl (a default value was not).</summary>
    public bool IsRead => _impl != null;

    /// <summary>Whether these offsets are LibTorch's, shown once on a view at a known offset of a tensor made for the purpose.</summary>
    public static bool LayoutHolds { get; } = CheckLayout();

    /// <summary>
    /// Whether the word at <c>data_type_</c> also holds the contiguity flag, shown once by a <c>set_()</c> onto a matrix and
    /// its transpose (the same storage, offset, count and dtype): then the compare sees a tensor restrided in place.
    /// </summary>
    public static bool FlagsHold { get; } = LayoutHolds && CheckFlags();

    private static readonly ulong s_typeAndFlagsMask = FlagsHold ? ulong.MaxValue : ushort.MaxValue;

    /// <summary>
    /// The fields of the TensorImpl behind <paramref name="handle"/> (an at::Tensor: its one member is the TensorImpl
    /// pointer), when they give <paramref name="dataPointer"/>, the pointer LibTorch returned for it, and
    /// <paramref name="numel"/> elements; else false. The caller keeps the TensorImpl alive for as long as it compares.
    /// </summary>
    public static bool TryRead(IntPtr handle, IntPtr dataPointer, long numel, torch.ScalarType dtype, out TensorImplFields fields)
    {
        fields = default;
        if (!LayoutHolds || handle == IntPtr.Zero || dataPointer == IntPtr.Zero || numel <= 0) return false;
        var read = new TensorImplFields(*(byte**)handle);
        if (read._numel != numel || read._data == null || read._data + read._storageOffset * DTypes.SizeOf(dtype) != (byte*)dataPointer) return false;
        fields = read;
        return true;
    }

    /// <summary>
    /// Whether the TensorImpl's fields, and its storage's data pointer, are still those read: then so are its data pointer,
    /// element count and (where <see cref="FlagsHold"/>) contiguity. (Not a lazily cloned storage that <c>data_ptr()</c>
    /// would copy on access, nor a reshape that keeps the tensor contiguous, which averages the same memory alike.)
    /// </summary>
    public bool Unchanged()
    {
        byte* storage = *(byte**)(_impl + StorageAt);
        return storage == _storage && *(long*)(_impl + StorageOffsetAt) == _storageOffset && ReadNumel(_impl) == _numel
            && ReadTypeAndFlags(_impl) == _typeAndFlags && *(byte**)(storage + StorageDataAt) == _data;
    }

    /// <summary>
    /// Brings a whole TensorImpl toward the cache, for a <c>data_ptr()</c> call: LibTorch 2.10's is 192 bytes, read at
    /// its first line (the storage) and its last (the flags <c>data_ptr()</c> tests at 184), and the four lines cover it
    /// at any 16-byte alignment. A pass that left the last line to the call paid one miss per tensor, one after another.
    /// Only a prefetch: a wrong guess about the layout costs a useless line, never a wrong answer.
    /// </summary>
    public static void PrefetchObject(byte* impl)
    {
        Sse.Prefetch0(impl);
        Sse.Prefetch0(impl + 64);
        Sse.Prefetch0(impl + 128);
        Sse.Prefetch0(impl + 184);
    }

    /// <summary>
    /// The dtype, device and layout-flag word of the tensor behind <paramref name="handle"/>, as <see cref="Unchanged"/>
    /// compares it (the dtype alone where <see cref="FlagsHold"/> does not; zero where <see cref="LayoutHolds"/> does not).
    /// </summary>
    public static ulong TypeAndFlagsOf(IntPtr handle) => LayoutHolds ? ReadTypeAndFlags(*(byte**)handle) : 0;

    /// <summary>
    /// Whether the tensor behind <paramref name="handle"/> no longer has <paramref name="numel"/> elements or the word
    /// <paramref name="typeAndFlags"/> (<see cref="TypeAndFlagsOf"/>), read from the lines a <c>data_ptr()</c> call has just
    /// read; false where <see cref="LayoutHolds"/> does not. A tensor shrunk or restrided in place keeps its data pointer:
    /// this is how the check sees it without another call.
    /// </summary>
    public static bool LayoutMoved(IntPtr handle, long numel, ulong typeAndFlags)
    {
        if (!LayoutHolds) return false;
        byte* impl = *(byte**)handle;
        return ReadNumel(impl) != numel || ReadTypeAndFlags(impl) != typeAndFlags;
    }

    private static long ReadNumel(byte* impl) => *(long*)(impl + NumelAt);

    // The word from data_type_ on, as far as it is shown to hold what the compare needs (see FlagsHold).
    private static ulong ReadTypeAndFlags(byte* impl) => *(ulong*)(impl + DataTypeAt) & s_typeAndFlagsMask;

    /// <summary>The StorageImpl pointer of a TensorImpl, for prefetching only (unproven unless <see cref="LayoutHolds"/>).</summary>
    public static byte* StorageOf(byte* impl) => *(byte**)(impl + StorageAt);

    /// <summary>Brings the lines <see cref="Unchanged"/> reads toward the cache (the storage's is usually shared and warm).</summary>
    public void Prefetch()
    {
        if (!Sse.IsSupported) return;
        Sse.Prefetch0(_impl + StorageAt);
        // The offset, count, dtype and flags span bytes 152-175: their first and last byte, on one line or two.
        Sse.Prefetch0(_impl + StorageOffsetAt);
        Sse.Prefetch0(_impl + DataTypeAt + TypeAndFlagsBytes - 1);
    }

    private static bool CheckLayout()
    {
        try
        {
            using var whole = torch.zeros(64, dtype: torch.ScalarType.Float32);
            using var view = whole.narrow(0, 7, 5);
            using var wider = torch.zeros(1, dtype: torch.ScalarType.Float64);
            byte* wholeImpl = *(byte**)whole.Handle;
            byte* viewImpl = *(byte**)view.Handle;
            // Plain loads inside the two objects first; the storage pointer is followed only once both agree on it and it
            // looks like a heap address.
            byte* storage = *(byte**)(viewImpl + StorageAt);
            if (storage != *(byte**)(wholeImpl + StorageAt) || (ulong)storage < 65536 || ((ulong)storage & 7) != 0) return false;
            if (*(long*)(viewImpl + StorageOffsetAt) != 7 || *(long*)(wholeImpl + StorageOffsetAt) != 0) return false;
            if (*(long*)(viewImpl + NumelAt) != 5 || *(long*)(wholeImpl + NumelAt) != 64) return false;
            ushort dataType = *(ushort*)(viewImpl + DataTypeAt);
            if (dataType != *(ushort*)(wholeImpl + DataTypeAt) || dataType == *(ushort*)(*(byte**)wider.Handle + DataTypeAt)) return false;
            return *(byte**)(storage + StorageDataAt) == (byte*)LiveSlots.DataPointer(whole)
                && LiveSlots.DataPointer(view) == LiveSlots.DataPointer(whole) + 7 * sizeof(float);
        }
        catch (Exception)
        {
            return false;
        }
    }

    private static bool CheckFlags()
    {
        try
        {
            // One TensorImpl set_() onto a matrix, its transpose, and the matrix again: the word must move with the
            // strides alone (the dtype bytes stay) and come back with them. Compared within one object only: the word's
            // last bytes may be padding, which differs between objects but not within one.
            using var matrix = torch.zeros(4, 4, dtype: torch.ScalarType.Float32);
            using var transposed = matrix.t();
            using var target = torch.zeros(1, dtype: torch.ScalarType.Float32);
            byte* impl = *(byte**)target.Handle;
            using var _ = torch.no_grad();
            InPlace.Release(target.set_(matrix), target);
            ulong contiguous = *(ulong*)(impl + DataTypeAt);
            InPlace.Release(target.set_(transposed), target);
            ulong restrided = *(ulong*)(impl + DataTypeAt);
            bool sawTranspose = !target.is_contiguous();
            InPlace.Release(target.set_(matrix), target);
            ulong back = *(ulong*)(impl + DataTypeAt);
            return sawTranspose && *(byte**)target.Handle == impl && restrided != contiguous && (ushort)restrided == (ushort)contiguous && back == contiguous;
        }
        catch (Exception)
        {
            return false;
        }
    }
}
