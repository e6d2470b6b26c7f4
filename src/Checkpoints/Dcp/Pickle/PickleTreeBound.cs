using System.Collections.Generic;

namespace EmaGen.Dcp.Pickle;

/// <summary>
/// Counts the nodes of a decoded pickle value walked as a tree, the way printers, converters and metadata readers walk
/// it, and rejects it past a budget: memo reuse lets a few bytes describe an exponential or cyclic tree.
/// </summary>
internal static class PickleTreeBound
{
    public static void Check(object? root, long budget, string source)
    {
        var pending = new Stack<object?>();
        pending.Push(root);
        long nodes = 0;
        while (pending.Count > 0)
        {
            var value = pending.Pop();
            if (++nodes > budget)
            {
                throw new CheckpointFormatException(
                    $"{source}: pickle value has more than {budget} nodes when expanded (shared or self-referencing containers); rejected.");
            }
            switch (value)
            {
                case PickleTuple t:
                    foreach (var item in t.Items) pending.Push(item);
                    break;
                case List<object?> list:
                    foreach (var item in list) pending.Push(item);
                    break;
                case PickleDict dict:
                    foreach (var (k, v) in dict.Items)
                    {
                        pending.Push(k);
                        pending.Push(v);
                    }
                    break;
                case PickleObject obj:
                    pending.Push(obj.State);
                    break;
                case PickleEnum e:
                    pending.Push(e.Value);
                    break;
            }
        }
    }
}
