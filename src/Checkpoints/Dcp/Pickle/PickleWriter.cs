using System;
using System.Buffers.Binary;
using System.IO;
using System.Text;

namespace EmaGen.Dcp.Pickle;

/// <summary>
/// Writes the pickle subset DCP needs, protocol 2 (which every Python 3 and PyTorch version reads): ints, floats,
/// strings, bools, None, tuples, lists, dicts, GLOBAL, NEWOBJ/BUILD for dataclasses, REDUCE for the few callables the
/// format uses, and BINPERSID for storages. No memo: values are written as often as they occur.
/// </summary>
internal sealed class PickleWriter
{
    private readonly MemoryStream _out = new();

    public PickleWriter() => _out.Write(stackalloc byte[] { 0x80, 2 });

    public PickleWriter Mark() => Op((byte)'(');

    public PickleWriter None() => Op((byte)'N');

    public PickleWriter Bool(bool value) => Op(value ? (byte)0x88 : (byte)0x89);

    public PickleWriter Int(long value)
    {
        if (value >= 0 && value <= byte.MaxValue)
        {
            Span<byte> b = stackalloc byte[] { (byte)'K', (byte)value };
            _out.Write(b);
        }
        else if (value >= 0 && value <= ushort.MaxValue)
        {
            Span<byte> b = stackalloc byte[3];
            b[0] = (byte)'M';
            BinaryPrimitives.WriteUInt16LittleEndian(b[1..], (ushort)value);
            _out.Write(b);
        }
        else if (value >= int.MinValue && value <= int.MaxValue)
        {
            Span<byte> b = stackalloc byte[5];
            b[0] = (byte)'J';
            BinaryPrimitives.WriteInt32LittleEndian(b[1..], (int)value);
            _out.Write(b);
        }
        else
        {
            // LONG1: little-endian two's complement, 8 bytes are always enough for a long.
            Span<byte> b = stackalloc byte[10];
            b[0] = 0x8a;
            b[1] = 8;
            BinaryPrimitives.WriteInt64LittleEndian(b[2..], value);
            _out.Write(b);
        }
        return this;
    }

    public PickleWriter Float(double value)
    {
        Span<byte> b = stackalloc byte[9];
        b[0] = (byte)'G';
        BinaryPrimitives.WriteDoubleBigEndian(b[1..], value);
        _out.Write(b);
        return this;
    }

    public PickleWriter String(string value)
    {
        var bytes = Encoding.UTF8.GetBytes(value);
        Span<byte> b = stackalloc byte[5];
        b[0] = (byte)'X';
        BinaryPrimitives.WriteUInt32LittleEndian(b[1..], (uint)bytes.Length);
        _out.Write(b);
        _out.Write(bytes);
        return this;
    }

    public PickleWriter Global(string module, string name)
    {
        _out.WriteByte((byte)'c');
        _out.Write(Encoding.ASCII.GetBytes(module + "\n" + name + "\n"));
        return this;
    }

    public PickleWriter EmptyTuple() => Op((byte)')');

    /// <summary>TUPLE: everything since the last MARK.</summary>
    public PickleWriter Tuple() => Op((byte)'t');

    public PickleWriter EmptyList() => Op((byte)']');

    /// <summary>APPENDS: everything since the last MARK, onto the list below it.</summary>
    public PickleWriter Appends() => Op((byte)'e');

    public PickleWriter EmptyDict() => Op((byte)'}');

    /// <summary>SETITEMS: key/value pairs since the last MARK, into the dict below it.</summary>
    public PickleWriter SetItems() => Op((byte)'u');

    public PickleWriter NewObj() => Op(0x81);

    public PickleWriter Build() => Op((byte)'b');

    public PickleWriter Reduce() => Op((byte)'R');

    public PickleWriter BinPersId() => Op((byte)'Q');

    /// <summary>Writes a tuple of ints (shapes, strides, offsets).</summary>
    public PickleWriter IntTuple(ReadOnlySpan<long> values)
    {
        if (values.Length == 0) return EmptyTuple();
        Mark();
        foreach (var v in values) Int(v);
        return Tuple();
    }

    /// <summary>Writes <c>torch.Size(values)</c>.</summary>
    public PickleWriter TorchSize(ReadOnlySpan<long> values)
    {
        Global("torch", "Size").Mark();
        IntTuple(values);
        return Tuple().Reduce();
    }

    /// <summary>Ends the pickle and returns its bytes.</summary>
    public byte[] Finish()
    {
        _out.WriteByte((byte)'.');
        return _out.ToArray();
    }

    private PickleWriter Op(byte op)
    {
        _out.WriteByte(op);
        return this;
    }
}
