using System;
using System.IO;
using System.Runtime.InteropServices;
using EmaGen.Dcp.Zip;
using Xunit;

namespace EmaGen.Tests.Dcp;

/// <summary>
/// A record written from native memory is checksummed on another core while it is written. When the write fails (a
/// full disk), the caller frees that memory right after: the checksum task must have ended before the failure
/// reaches the caller, or it reads freed memory (an access violation no handler can catch).
/// </summary>
public sealed class ChecksumLifetimeTests
{
    [Fact]
    public unsafe void AFailedWriteReturnsOnlyAfterTheChecksumOfItsMemoryEnded()
    {
        const long Size = 64L << 20;
        for (int attempt = 0; attempt < 5; attempt++)
        {
            // Large enough that malloc maps it and free unmaps it: a late read of it faults.
            byte* data = (byte*)NativeMemory.Alloc((nuint)Size);
            new Span<byte>(data, 1 << 20).Fill(7);
            var writer = new TorchArchiveWriter(new FullDisk());
            try
            {
                Assert.Throws<IOException>(() => writer.AddRecord("data/0", data, Size, 1 << 20, out _));
                Assert.NotNull(writer.LastChecksum);
                Assert.True(writer.LastChecksum!.IsCompleted, "the checksum task still reads the record's memory after the failed write returned");
            }
            finally
            {
                NativeMemory.Free(data);
            }
        }
    }

    // Takes the headers, then fails the first large write, as ENOSPC does part-way through a record.
    private sealed class FullDisk : Stream
    {
        public override bool CanRead => false;

        public override bool CanSeek => false;

        public override bool CanWrite => true;

        public override long Length => throw new NotSupportedException();

        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

        public override void Write(ReadOnlySpan<byte> buffer)
        {
            if (buffer.Length >= 1 << 20) throw new IOException("No space left on device : 'full-disk'");
        }

        public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

        public override void Flush()
        {
        }

        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();
    }
}
