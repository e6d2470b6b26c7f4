using System;
using System.Text;

namespace EmaGen.Generator.Emitting;

/// <summary>A StringBuilder that indents by four spaces per open block; enough for readable generated code.</summary>
internal sealed class CodeWriter
{
    private readonly StringBuilder _text = new();
    private int _depth;

    public CodeWriter Line(string line = "")
    {
        if (line.Length > 0) _text.Append(' ', _depth * 4).Append(line);
        _text.Append('\n');
        return this;
    }

    public CodeWriter Open(string header)
    {
        Line(header);
        Line("{");
        _depth++;
        return this;
    }

    public CodeWriter Close(string suffix = "")
    {
        if (_depth == 0) throw new InvalidOperationException("unbalanced block");
        _depth--;
        return Line("}" + suffix);
    }

    public override string ToString() => _text.ToString();
}
