using System;
using System.Collections.Generic;
using System.Linq;

namespace EmaGen;

/// <summary>
/// <see cref="EmaOptions.Include"/> and <see cref="EmaOptions.Exclude"/> at bind time: glob patterns over the
/// <c>named_parameters()</c>/<c>named_buffers()</c> names (<c>*</c> any run of characters, dots included; <c>?</c> one
/// character; the whole name must match). A name is kept when it matches some include pattern (or there are none)
/// and no exclude pattern. Every pattern must match some name of the model, else binding fails naming it.
/// </summary>
internal sealed class NameFilter
{
    private readonly string[] _include;
    private readonly string[] _exclude;
    private readonly bool[] _includeUsed;
    private readonly bool[] _excludeUsed;

    private NameFilter(string[] include, string[] exclude)
    {
        _include = include;
        _exclude = exclude;
        _includeUsed = new bool[include.Length];
        _excludeUsed = new bool[exclude.Length];
    }

    /// <summary>The options' filter, or null when they set no pattern.</summary>
    public static NameFilter? Of(EmaOptions options)
    {
        var include = options.Include ?? [];
        var exclude = options.Exclude ?? [];
        if (include.Count == 0 && exclude.Count == 0) return null;
        foreach (var p in include) Check(p, nameof(EmaOptions.Include));
        foreach (var p in exclude) Check(p, nameof(EmaOptions.Exclude));
        return new NameFilter([.. include], [.. exclude]);
    }

    private static void Check(string? pattern, string option)
    {
        if (string.IsNullOrEmpty(pattern)) throw new ArgumentException($"EmaOptions.{option} holds an empty pattern.", option);
    }

    /// <summary>Whether <paramref name="name"/> is kept; notes which patterns matched it.</summary>
    public bool Accepts(string name)
    {
        bool included = _include.Length == 0;
        for (int i = 0; i < _include.Length; i++)
        {
            if (!Matches(_include[i], name)) continue;
            _includeUsed[i] = true;
            included = true;
        }
        bool excluded = false;
        for (int i = 0; i < _exclude.Length; i++)
        {
            if (!Matches(_exclude[i], name)) continue;
            _excludeUsed[i] = true;
            excluded = true;
        }
        return included && !excluded;
    }

    /// <summary>Throws, naming the pattern, when a pattern matched none of the names seen.</summary>
    public void ThrowIfUnused(IReadOnlyList<string> names)
    {
        for (int i = 0; i < _include.Length; i++)
        {
            if (!_includeUsed[i]) throw Unused(nameof(EmaOptions.Include), _include[i], names);
        }
        for (int i = 0; i < _exclude.Length; i++)
        {
            if (!_excludeUsed[i]) throw Unused(nameof(EmaOptions.Exclude), _exclude[i], names);
        }
    }

    private static ArgumentException Unused(string option, string pattern, IReadOnlyList<string> names)
    {
        string some = string.Join(", ", names.Count > 5 ? [.. System.Linq.Enumerable.Take(names, 5), "..."] : names);
        return new ArgumentException($"EmaOptions.{option} pattern '{pattern}' matches no parameter{(names.Count == 0 ? "" : $" of the model ({names.Count} names: {some})")}.", option);
    }

    /// <summary>
    /// The patterns as a checkpoint records them: <c>include=a|b;exclude=c</c>, each list without repeats and in ordinal
    /// order, so the same filters given in another order describe the same (a strict load compares descriptions).
    /// </summary>
    public string Describe() => Describe(_include, _exclude);

    private static string Describe(IEnumerable<string> include, IEnumerable<string> exclude) =>
        $"include={string.Join("|", include.Distinct().Order(StringComparer.Ordinal))};exclude={string.Join("|", exclude.Distinct().Order(StringComparer.Ordinal))}";

    /// <summary>A recorded description in the order <see cref="Describe()"/> gives (older checkpoints kept the options' order); other text as it is.</summary>
    public static string Canonical(string description)
    {
        const string include = "include=", exclude = ";exclude=";
        int split = description.IndexOf(exclude, StringComparison.Ordinal);
        if (!description.StartsWith(include, StringComparison.Ordinal) || split < include.Length) return description;
        static string[] List(string text) => text.Length == 0 ? [] : text.Split('|');
        return Describe(List(description[include.Length..split]), List(description[(split + exclude.Length)..]));
    }

    /// <summary>Glob match of the whole <paramref name="name"/>: <c>*</c> any run of characters, <c>?</c> one.</summary>
    public static bool Matches(string pattern, string name)
    {
        int p = 0, n = 0, star = -1, mark = 0;
        while (n < name.Length)
        {
            if (p < pattern.Length && (pattern[p] == '?' || pattern[p] == name[n]))
            {
                p++;
                n++;
            }
            else if (p < pattern.Length && pattern[p] == '*')
            {
                star = p++;
                mark = n;
            }
            else if (star >= 0)
            {
                p = star + 1;
                n = ++mark;
            }
            else
            {
                return false;
            }
        }
        while (p < pattern.Length && pattern[p] == '*') p++;
        return p == pattern.Length;
    }
}
