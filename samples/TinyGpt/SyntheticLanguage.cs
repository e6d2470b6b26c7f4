using System;
using TorchSharp;
using static TorchSharp.torch;

namespace EmaGen.Samples.TinyGpt;

/// <summary>
/// A small language the sample generates itself (no downloads). Each sequence is a phrase from a sparse first-order
/// Markov chain over the word tokens (every word has a few likely successors), then a separator, then the phrase again.
/// The first half rewards learning the chain's statistics; the repeat can only be predicted by attending back to the
/// phrase (an induction/copy task), which is what attention layers are for.
/// </summary>
public sealed class SyntheticLanguage
{
    /// <summary>Tokens: words 0 .. Vocabulary-2, and the separator.</summary>
    public const int Vocabulary = 48;
    public const int Separator = Vocabulary - 1;
    private const int Successors = 3;

    private readonly int[,] _next;
    private readonly double[] _weights = { 0.6, 0.3, 0.1 };

    public SyntheticLanguage(int phraseLength, int seed)
    {
        PhraseLength = phraseLength;
        var random = new Random(seed);
        _next = new int[Separator, Successors];
        for (int word = 0; word < Separator; word++)
        {
            for (int k = 0; k < Successors; k++)
            {
                // Distinct successors, so EntropyFloor is exact.
                int candidate;
                do candidate = random.Next(Separator);
                while (k > 0 && (candidate == _next[word, 0] || (k > 1 && candidate == _next[word, 1])));
                _next[word, k] = candidate;
            }
        }
    }

    public int PhraseLength { get; }

    /// <summary>Tokens per sequence: phrase, separator, phrase.</summary>
    public int SequenceLength => 2 * PhraseLength + 1;

    /// <summary>
    /// A batch of inputs and next-token targets, [batch, SequenceLength - 1] each (int64), and the loss the language's
    /// own probabilities give these targets (nats per predicted token): the floor no model can beat on average. Only the
    /// phrase's chain steps are uncertain; the separator and the repeat are determined by what came before.
    /// </summary>
    public (Tensor Inputs, Tensor Targets, double TrueLoss) Batch(int batch, Random random)
    {
        var tokens = new long[batch * SequenceLength];
        double nats = 0;
        for (int b = 0; b < batch; b++)
        {
            int offset = b * SequenceLength;
            int word = random.Next(Separator);
            for (int i = 0; i < PhraseLength; i++)
            {
                if (i > 0)
                {
                    int k = Successor(random);
                    nats -= Math.Log(_weights[k]);
                    word = _next[word, k];
                }
                tokens[offset + i] = word;
                tokens[offset + PhraseLength + 1 + i] = word;
            }
            tokens[offset + PhraseLength] = Separator;
        }
        using var all = torch.tensor(tokens, new long[] { batch, SequenceLength });
        return (all[.., ..^1].contiguous(), all[.., 1..].contiguous(), nats / batch / (SequenceLength - 1));
    }

    private int Successor(Random random)
    {
        double u = random.NextDouble();
        for (int k = 0; k < Successors - 1; k++)
        {
            if (u < _weights[k]) return k;
            u -= _weights[k];
        }
        return Successors - 1;
    }
}
