namespace EmaGen.Fuzz;

/// <summary>What one case did. The last four are the bad classes: a clean fuzz run has none.</summary>
public enum Outcome
{
    /// <summary>The read succeeded and returned exactly the original values (the mutation touched nothing that matters).</summary>
    Harmless,
    /// <summary>The read failed with the documented exception (<c>CheckpointFormatException</c>, or <c>ArgumentException</c> from a manager's name/shape checks) and changed nothing.</summary>
    DocumentedException,
    /// <summary>Any other exception type left the library.</summary>
    OtherException,
    /// <summary>The reading process died, or one case ran past the time limit.</summary>
    CrashOrHang,
    /// <summary>The case's peak resident memory grew past the budget.</summary>
    OverMemoryBudget,
    /// <summary>A read succeeded with values other than the original, or a failed load changed the shadows.</summary>
    SilentValueChange,
}
