using System;
using System.Globalization;

namespace EmaGen;

/// <summary>This process's rank and the world size: from explicit values, else torchrun's RANK/WORLD_SIZE, else SLURM's SLURM_PROCID/SLURM_NTASKS.</summary>
public readonly struct RankInfo
{
    internal RankInfo(int rank, int worldSize) => (Rank, WorldSize) = (rank, worldSize);

    public int Rank { get; }

    public int WorldSize { get; }

    /// <summary>Resolves rank and world size; throws naming the variables looked at when nothing is set.</summary>
    public static RankInfo Resolve(int? rank = null, int? worldSize = null) => Resolve(rank, worldSize, Environment.GetEnvironmentVariable);

    /// <summary><see cref="Resolve(int?, int?)"/> reading the variables through <paramref name="environment"/>.</summary>
    internal static RankInfo Resolve(int? rank, int? worldSize, Func<string, string?> environment)
    {
        RankInfo info;
        if (rank is not null || worldSize is not null)
        {
            if (rank is null || worldSize is null) throw new ArgumentException("Give both rank and world size, or neither.");
            info = new RankInfo(rank.Value, worldSize.Value);
        }
        else if (Read(environment, "RANK") is { } r && Read(environment, "WORLD_SIZE") is { } w)
        {
            info = new RankInfo(r, w);
        }
        else if (Read(environment, "SLURM_PROCID") is { } sr && Read(environment, "SLURM_NTASKS") is { } sw)
        {
            info = new RankInfo(sr, sw);
        }
        else
        {
            throw new InvalidOperationException(
                "Rank and world size are unknown: pass them explicitly, or launch with torchrun (RANK, WORLD_SIZE) or SLURM (SLURM_PROCID, SLURM_NTASKS).");
        }
        if (info.WorldSize < 1 || info.Rank < 0 || info.Rank >= info.WorldSize)
        {
            throw new ArgumentOutOfRangeException(nameof(rank), $"rank {info.Rank} is outside world size {info.WorldSize}.");
        }
        return info;
    }

    private static int? Read(Func<string, string?> environment, string name)
    {
        var text = environment(name);
        if (string.IsNullOrWhiteSpace(text)) return null;
        return int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int value)
            ? value
            : throw new InvalidOperationException($"Environment variable {name}='{text}' is not an integer.");
    }
}
