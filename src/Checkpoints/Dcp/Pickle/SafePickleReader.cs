using System;
using System.Buffers.Binary;
using System.Collections.Generic;
using System.Numerics;
using System.Text;

namespace EmaGen.Dcp.Pickle;

/// <summary>
/// A pickle reader for untrusted checkpoint files: protocols 2-5 (FRAME, memo, GLOBAL/STACK_GLOBAL, NEWOBJ/NEWOBJ_EX,
/// BUILD, LONG1/LONG4, BINUNICODE8, BINPERSID), producing plain C# values (<see cref="PickleTuple"/>,
/// <see cref="PickleDict"/>, <see cref="PickleObject"/>, ...). Only globals in <see cref="PickleWhitelist"/> are
/// accepted, and only in the roles listed there; nothing is imported, instantiated or called. One forward pass, every
/// length checked against the bytes left, every container built from items already on the stack, so the work and the
/// memory are bounded by a small multiple of the input. Any failure is a <see cref="CheckpointFormatException"/>.
/// </summary>
internal static class SafePickleReader
{
    /// <summary>Deepest MARK nesting accepted; real checkpoints use a handful.</summary>
    public const int MaxMarkDepth = 256;

    private const int MaxLongBytes = 1024;

    private static readonly object Mark = new();

    /// <summary>
    /// Most nodes the value may have when walked as a tree (shared containers counted at every use), per input byte. A
    /// pickle can reuse a container through the memo, so a few bytes can describe a value whose tree is exponential or
    /// infinite (a list holding itself); every consumer walks values as trees, so the reader rejects such values.
    /// </summary>
    public const int MaxNodesPerByte = 16;

    /// <summary>Reads one pickle from <paramref name="data"/>; <paramref name="source"/> names it in errors.</summary>
    public static object? Read(ReadOnlySpan<byte> data, string source)
    {
        var state = new State(source);
        try
        {
            var value = Run(data, state);
            PickleTreeBound.Check(value, MaxNodesPerByte * (long)data.Length + 1024, source);
            return value;
        }
        catch (CheckpointFormatException)
        {
            throw;
        }
        catch (Exception e) when (e is InvalidCastException or IndexOutOfRangeException or ArgumentException
                                   or KeyNotFoundException or OverflowException or FormatException or InvalidOperationException)
        {
            throw new CheckpointFormatException($"{source}: malformed pickle near byte {state.Position}: {e.Message}", e);
        }
    }

    private sealed class State
    {
        public State(string source) => Source = source;
        public string Source { get; }
        public int Position;
        public readonly List<object?> Stack = new();
        public readonly List<int> Marks = new();
        public readonly Dictionary<long, object?> Memo = new();
    }

    private static object? Run(ReadOnlySpan<byte> d, State s)
    {
        var stack = s.Stack;
        while (true)
        {
            if (s.Position >= d.Length) throw Error(s, "ends without STOP");
            int at = s.Position;
            byte op = d[s.Position++];
            switch (op)
            {
                case 0x80: // PROTO
                    {
                        byte version = Take(d, s, 1)[0];
                        if (version > 5) throw Error(s, $"protocol {version} is not supported (2 to 5 are)");
                        break;
                    }
                case 0x95: // FRAME: a length hint; the frame's bytes follow inline.
                    {
                        long length = (long)BinaryPrimitives.ReadUInt64LittleEndian(Take(d, s, 8));
                        if (length > d.Length - s.Position) throw Error(s, $"FRAME of {length} bytes exceeds the {d.Length - s.Position} left");
                        break;
                    }
                case (byte)'.': // STOP
                    if (stack.Count != 1 || s.Marks.Count != 0) throw Error(s, $"STOP with {stack.Count} stack items and {s.Marks.Count} open marks");
                    return stack[0];
                case (byte)'(': // MARK
                    if (s.Marks.Count >= MaxMarkDepth) throw Error(s, $"nesting deeper than {MaxMarkDepth}");
                    s.Marks.Add(stack.Count);
                    stack.Add(Mark);
                    break;
                case (byte)'0': Pop(s); break; // POP
                case (byte)'1': PopMark(s); break; // POP_MARK
                case (byte)'2': stack.Add(Peek(s)); break; // DUP
                case (byte)'N': stack.Add(null); break;
                case 0x88: stack.Add(true); break;
                case 0x89: stack.Add(false); break;
                case (byte)'J': stack.Add((long)BinaryPrimitives.ReadInt32LittleEndian(Take(d, s, 4))); break;
                case (byte)'K': stack.Add((long)Take(d, s, 1)[0]); break;
                case (byte)'M': stack.Add((long)BinaryPrimitives.ReadUInt16LittleEndian(Take(d, s, 2))); break;
                case 0x8a: stack.Add(Long(Take(d, s, Take(d, s, 1)[0]), s)); break; // LONG1
                case 0x8b: // LONG4
                    {
                        int n = BinaryPrimitives.ReadInt32LittleEndian(Take(d, s, 4));
                        if (n < 0 || n > MaxLongBytes) throw Error(s, $"LONG4 of {n} bytes (at most {MaxLongBytes} accepted)");
                        stack.Add(Long(Take(d, s, n), s));
                        break;
                    }
                case (byte)'G': stack.Add(BinaryPrimitives.ReadDoubleBigEndian(Take(d, s, 8))); break; // BINFLOAT
                case (byte)'X': stack.Add(Utf8(Take(d, s, Length32(d, s)), s)); break; // BINUNICODE
                case 0x8c: stack.Add(Utf8(Take(d, s, Take(d, s, 1)[0]), s)); break; // SHORT_BINUNICODE
                case 0x8d: stack.Add(Utf8(Take(d, s, Length64(d, s)), s)); break; // BINUNICODE8
                case (byte)'B': stack.Add(Take(d, s, Length32(d, s)).ToArray()); break; // BINBYTES
                case (byte)'C': stack.Add(Take(d, s, Take(d, s, 1)[0]).ToArray()); break; // SHORT_BINBYTES
                case 0x8e: stack.Add(Take(d, s, Length64(d, s)).ToArray()); break; // BINBYTES8
                case 0x96: stack.Add(Take(d, s, Length64(d, s)).ToArray()); break; // BYTEARRAY8
                case (byte)')': stack.Add(new PickleTuple(Array.Empty<object?>())); break;
                case (byte)'t': stack.Add(new PickleTuple(PopMark(s).ToArray())); break;
                case 0x85: stack.Add(new PickleTuple(new[] { Pop(s) })); break;
                case 0x86: { var b = Pop(s); var a = Pop(s); stack.Add(new PickleTuple(new[] { a, b })); break; }
                case 0x87: { var c = Pop(s); var b = Pop(s); var a = Pop(s); stack.Add(new PickleTuple(new[] { a, b, c })); break; }
                case (byte)']': stack.Add(new List<object?>()); break;
                case (byte)'l': stack.Add(PopMark(s)); break; // LIST
                case (byte)'a': { var item = Pop(s); As<List<object?>>(Peek(s), s, "APPEND target").Add(item); break; }
                case (byte)'e': { var items = PopMark(s); As<List<object?>>(Peek(s), s, "APPENDS target").AddRange(items); break; }
                case 0x8f: stack.Add(new List<object?>()); break; // EMPTY_SET: read as a list
                case 0x90: { var items = PopMark(s); As<List<object?>>(Peek(s), s, "ADDITEMS target").AddRange(items); break; }
                case 0x91: stack.Add(PopMark(s)); break; // FROZENSET
                case (byte)'}': stack.Add(new PickleDict()); break;
                case (byte)'d': stack.Add(ToDict(PopMark(s), new PickleDict(), s)); break; // DICT
                case (byte)'s': { var v = Pop(s); var k = Pop(s); As<PickleDict>(Peek(s), s, "SETITEM target").Set(k, v); break; }
                case (byte)'u': { var items = PopMark(s); ToDict(items, As<PickleDict>(Peek(s), s, "SETITEMS target"), s); break; }
                case (byte)'c': // GLOBAL "module\nname\n"
                    {
                        string module = Line(d, s);
                        string name = Line(d, s);
                        stack.Add(Resolve(module, name, s));
                        break;
                    }
                case 0x93: // STACK_GLOBAL
                    {
                        var name = As<string>(Pop(s), s, "STACK_GLOBAL name");
                        var module = As<string>(Pop(s), s, "STACK_GLOBAL module");
                        stack.Add(Resolve(module, name, s));
                        break;
                    }
                case (byte)'R': { var args = As<PickleTuple>(Pop(s), s, "REDUCE arguments"); var f = Pop(s); stack.Add(Reduce(f, args, s)); break; }
                case 0x81: { var args = As<PickleTuple>(Pop(s), s, "NEWOBJ arguments"); var cls = Pop(s); stack.Add(NewObject(cls, args, s)); break; }
                case 0x92: // NEWOBJ_EX
                    {
                        As<PickleDict>(Pop(s), s, "NEWOBJ_EX keyword arguments");
                        var args = As<PickleTuple>(Pop(s), s, "NEWOBJ_EX arguments");
                        var cls = Pop(s);
                        stack.Add(NewObject(cls, args, s));
                        break;
                    }
                case (byte)'b': // BUILD
                    {
                        var state = Pop(s);
                        var target = Peek(s);
                        if (target is not PickleObject obj) throw Error(s, $"BUILD on {Describe(target)}; only DCP metadata classes take state");
                        obj.State = state;
                        break;
                    }
                case (byte)'Q': stack.Add(PersistentId(Pop(s), s)); break; // BINPERSID
                case (byte)'q': s.Memo[Take(d, s, 1)[0]] = Peek(s); break; // BINPUT
                case (byte)'r': s.Memo[BinaryPrimitives.ReadUInt32LittleEndian(Take(d, s, 4))] = Peek(s); break; // LONG_BINPUT
                case 0x94: s.Memo[s.Memo.Count] = Peek(s); break; // MEMOIZE
                case (byte)'h': stack.Add(Memo(Take(d, s, 1)[0], s)); break; // BINGET
                case (byte)'j': stack.Add(Memo(BinaryPrimitives.ReadUInt32LittleEndian(Take(d, s, 4)), s)); break; // LONG_BINGET
                default:
                    s.Position = at;
                    throw Error(s, $"opcode 0x{op:x2} is not supported");
            }
        }
    }

    private static object Resolve(string module, string name, State s)
    {
        if (!PickleWhitelist.TryGet(module, name, out var global))
        {
            throw Error(s, $"global '{module}.{name}' is not allowed (only DCP metadata and tensor-rebuild globals are)");
        }
        return global;
    }

    private static object NewObject(object? cls, PickleTuple args, State s)
    {
        if (cls is not PickleGlobal { Kind: GlobalKind.DataClass } type)
        {
            throw Error(s, $"NEWOBJ of {Describe(cls)}; only DCP metadata classes may be created");
        }
        if (args.Count != 0) throw Error(s, $"NEWOBJ of {type} with {args.Count} arguments (expected none)");
        return new PickleObject(type);
    }

    private static object? Reduce(object? callable, PickleTuple args, State s)
    {
        if (callable is not PickleGlobal g) throw Error(s, $"REDUCE on {Describe(callable)}");
        switch (g.Kind)
        {
            case GlobalKind.EnumClass:
                if (args.Count != 1) throw Error(s, $"{g}(...) with {args.Count} arguments (expected 1)");
                return new PickleEnum(g, args[0]);
            case GlobalKind.Function:
                break;
            default:
                throw Error(s, $"'{g}' cannot be called");
        }
        switch (g.Module, g.Name)
        {
            case ("torch", "Size"):
                {
                    var dims = args.Count == 0 ? Array.Empty<object?>() : As<PickleTuple>(args[0], s, "torch.Size argument").Items;
                    return new TorchSize(Longs(dims, s, "torch.Size"));
                }
            case ("torch.serialization", "_get_layout"):
                if (args.Count != 1 || args[0] is not "torch.strided") throw Error(s, $"_get_layout({Describe(args.Count > 0 ? args[0] : null)}); only torch.strided is supported");
                return new PickleGlobal("torch", "strided", GlobalKind.Constant);
            case ("torch._utils", "_rebuild_tensor_v2"):
                return RebuildTensor(args, s, dtypeFromArgument: false);
            case ("torch._utils", "_rebuild_tensor_v3"):
                return RebuildTensor(args, s, dtypeFromArgument: true);
            case ("torch._utils", "_rebuild_parameter"):
                if (args.Count < 1 || args[0] is not TensorReference tensor) throw Error(s, "_rebuild_parameter without a tensor");
                return tensor;
            case ("collections", "OrderedDict"):
                {
                    var dict = new PickleDict();
                    if (args.Count == 1 && args[0] is List<object?> pairs)
                    {
                        foreach (var pair in pairs)
                        {
                            var t = As<PickleTuple>(pair, s, "OrderedDict item");
                            if (t.Count != 2) throw Error(s, "OrderedDict item is not a pair");
                            dict.Set(t[0], t[1]);
                        }
                    }
                    else if (args.Count != 0)
                    {
                        throw Error(s, "OrderedDict(...) with unexpected arguments");
                    }
                    return dict;
                }
            case ("builtins", "getattr"):
                if (args.Count != 2 || args[0] is not PickleGlobal { Kind: GlobalKind.EnumClass } enumType || args[1] is not string member)
                {
                    throw Error(s, "builtins.getattr is only accepted for an Enum member by name");
                }
                return new PickleEnum(enumType, member);
            default: // pathlib.*Path(*parts)
                {
                    var parts = new string[args.Count];
                    for (int i = 0; i < parts.Length; i++) parts[i] = As<string>(args[i], s, $"{g} part");
                    if (parts.Length == 0) return ".";
                    var path = new StringBuilder(parts[0]);
                    for (int i = 1; i < parts.Length; i++)
                    {
                        if (path.Length > 0 && path[^1] != '/' && path[^1] != '\\') path.Append('/');
                        path.Append(parts[i]);
                    }
                    return path.ToString();
                }
        }
    }

    // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
    // _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype[, metadata])
    private static TensorReference RebuildTensor(PickleTuple args, State s, bool dtypeFromArgument)
    {
        int min = dtypeFromArgument ? 7 : 6;
        if (args.Count < min || args.Count > min + 1) throw Error(s, $"tensor rebuild with {args.Count} arguments (expected {min} or {min + 1})");
        var storage = As<StorageReference>(args[0], s, "tensor storage");
        long offset = AsLong(args[1], s, "storage_offset");
        var size = Longs(As<PickleTuple>(args[2], s, "tensor size").Items, s, "size");
        var stride = Longs(As<PickleTuple>(args[3], s, "tensor stride").Items, s, "stride");
        if (size.Length != stride.Length) throw Error(s, $"size has {size.Length} dimensions but stride {stride.Length}");
        string dtype;
        if (dtypeFromArgument)
        {
            var g = As<PickleGlobal>(args[6], s, "dtype");
            if (g.Kind != GlobalKind.Constant || !EmaGen.CheckpointDTypes.TryGetByTorchName(g.Name, out _)) throw Error(s, $"'{g}' is not a dtype");
            dtype = g.Name;
        }
        else if (EmaGen.CheckpointDTypes.TryGetByStorageClass(storage.StorageType.Name, out var held))
        {
            dtype = held.TorchName;
        }
        else
        {
            throw Error(s, $"_rebuild_tensor_v2 with storage type '{storage.StorageType}' (a typed storage class was expected)");
        }
        if (offset < 0) throw Error(s, $"negative storage_offset {offset}");
        foreach (var dim in size) if (dim < 0) throw Error(s, $"negative size {dim}");
        foreach (var st in stride) if (st < 0) throw Error(s, $"negative stride {st}");
        return new TensorReference(storage, offset, size, stride, dtype);
    }

    private static StorageReference PersistentId(object? pid, State s)
    {
        var t = As<PickleTuple>(pid, s, "persistent id");
        if (t.Count != 5 || t[0] is not "storage") throw Error(s, "persistent id is not ('storage', type, key, location, numel)");
        var type = As<PickleGlobal>(t[1], s, "storage type");
        if (type.Kind != GlobalKind.Storage) throw Error(s, $"'{type}' is not a storage type");
        long numel = AsLong(t[4], s, "storage numel");
        if (numel < 0) throw Error(s, $"negative storage size {numel}");
        return new StorageReference(type, As<string>(t[2], s, "storage key"), As<string>(t[3], s, "storage location"), numel);
    }

    private static PickleDict ToDict(List<object?> items, PickleDict dict, State s)
    {
        if (items.Count % 2 != 0) throw Error(s, "odd number of items for a dict");
        for (int i = 0; i < items.Count; i += 2) dict.Set(items[i], items[i + 1]);
        return dict;
    }

    private static object? Memo(long index, State s) =>
        s.Memo.TryGetValue(index, out var value) ? value : throw Error(s, $"memo entry {index} was never stored");

    private static object? Pop(State s)
    {
        var stack = s.Stack;
        if (stack.Count == 0 || (s.Marks.Count > 0 && s.Marks[^1] == stack.Count - 1)) throw Error(s, "stack underflow");
        var value = stack[^1];
        stack.RemoveAt(stack.Count - 1);
        return value;
    }

    private static object? Peek(State s)
    {
        if (s.Stack.Count == 0 || ReferenceEquals(s.Stack[^1], Mark)) throw Error(s, "stack underflow");
        return s.Stack[^1];
    }

    private static List<object?> PopMark(State s)
    {
        if (s.Marks.Count == 0) throw Error(s, "no MARK to pop to");
        int start = s.Marks[^1];
        s.Marks.RemoveAt(s.Marks.Count - 1);
        var items = s.Stack.GetRange(start + 1, s.Stack.Count - start - 1);
        s.Stack.RemoveRange(start, s.Stack.Count - start);
        return items;
    }

    private static ReadOnlySpan<byte> Take(ReadOnlySpan<byte> d, State s, long count)
    {
        if (count < 0 || count > d.Length - s.Position) throw Error(s, $"needs {count} bytes but only {d.Length - s.Position} are left");
        var span = d.Slice(s.Position, (int)count);
        s.Position += (int)count;
        return span;
    }

    private static long Length32(ReadOnlySpan<byte> d, State s) => BinaryPrimitives.ReadUInt32LittleEndian(Take(d, s, 4));

    private static long Length64(ReadOnlySpan<byte> d, State s)
    {
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(Take(d, s, 8));
        return n > (ulong)(d.Length - s.Position) ? throw Error(s, $"length {n} exceeds the {d.Length - s.Position} bytes left") : (long)n;
    }

    private static string Line(ReadOnlySpan<byte> d, State s)
    {
        int end = d[s.Position..].IndexOf((byte)'\n');
        if (end < 0 || end > 256) throw Error(s, "GLOBAL name is not a short newline-terminated line");
        var text = Encoding.ASCII.GetString(d.Slice(s.Position, end));
        s.Position += end + 1;
        return text;
    }

    private static string Utf8(ReadOnlySpan<byte> bytes, State s)
    {
        try
        {
            return new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(bytes);
        }
        catch (DecoderFallbackException)
        {
            throw Error(s, "string is not valid UTF-8");
        }
    }

    private static object Long(ReadOnlySpan<byte> bytes, State s)
    {
        if (bytes.Length > MaxLongBytes) throw Error(s, "integer too long");
        var value = new BigInteger(bytes, isUnsigned: false, isBigEndian: false);
        // Not a conditional expression: its type would be BigInteger, boxing every 8-byte offset (files over 2 GiB) as one.
        if (value >= long.MinValue && value <= long.MaxValue) return (long)value;
        return value;
    }

    private static long[] Longs(object?[] items, State s, string what)
    {
        var result = new long[items.Length];
        for (int i = 0; i < items.Length; i++) result[i] = AsLong(items[i], s, what);
        return result;
    }

    private static long AsLong(object? value, State s, string what) =>
        value is long l ? l : throw Error(s, $"{what} is {Describe(value)}, expected an integer");

    private static T As<T>(object? value, State s, string what) where T : class =>
        value as T ?? throw Error(s, $"{what} is {Describe(value)}, expected {typeof(T).Name}");

    internal static string Describe(object? value) => value switch
    {
        null => "None",
        string str => $"the string '{(str.Length > 40 ? str[..40] + "..." : str)}'",
        PickleGlobal g => $"'{g}'",
        _ when ReferenceEquals(value, Mark) => "a MARK",
        _ => value.GetType().Name,
    };

    private static CheckpointFormatException Error(State s, string message) =>
        new($"{s.Source}: pickle {message} (byte {s.Position}).");
}
