//! Length-prefixed frames on a byte stream: `[len: u32 big-endian][len bytes]`.
//!
//! Used for the core's messages on the control protocols and for the headers and end-to-end
//! frames of tunnels. A frame longer than the reader's limit is an error (the stream is then
//! closed): a peer cannot make this node allocate more than the limit.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Writes one frame (no flush), in one write: on a multiplexed stream every write becomes a
/// frame of its own, so the length and the body travel together.
pub async fn write<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame over 4 GiB"))?;
    let mut buf = Vec::with_capacity(4 + bytes.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(bytes);
    w.write_all(&buf).await
}

/// Reads one frame of at most `max` bytes; `None` at a clean end of stream between frames.
pub async fn read<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> io::Result<Option<Vec<u8>>> {
    let Some(len) = read_len(r, max).await? else {
        return Ok(None);
    };
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Ok(Some(buf))
}

/// Reads one frame into `buf` (whose length is the limit); its length, or `None` at a clean end
/// of stream between frames. For a stream of frames through one reused buffer.
pub async fn read_into<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
) -> io::Result<Option<usize>> {
    let Some(len) = read_len(r, buf.len()).await? else {
        return Ok(None);
    };
    r.read_exact(&mut buf[..len]).await?;
    Ok(Some(len))
}

/// Reads a frame's length prefix and checks it against `max`.
async fn read_len<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> io::Result<Option<usize>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the limit of {max}"),
        ));
    }
    Ok(Some(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversized_ones_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write(&mut a, b"hello").await.expect("write");
        write(&mut a, &[]).await.expect("write");
        write(&mut a, &[7u8; 100]).await.expect("write");
        drop(a);
        assert_eq!(
            read(&mut b, 64).await.expect("read"),
            Some(b"hello".to_vec())
        );
        assert_eq!(read(&mut b, 64).await.expect("read"), Some(vec![]));
        assert!(read(&mut b, 64).await.is_err());
    }

    #[tokio::test]
    async fn a_cut_length_is_an_error_and_a_clean_end_is_none() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 0]).await.expect("write");
        drop(a);
        assert!(read(&mut b, 64).await.is_err());
        let (a, mut b) = tokio::io::duplex(64);
        drop(a);
        assert_eq!(read(&mut b, 64).await.expect("read"), None);
    }

    #[tokio::test]
    async fn frames_read_into_one_buffer_and_oversized_ones_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write(&mut a, b"hello").await.expect("write");
        write(&mut a, &[7u8; 9]).await.expect("write");
        drop(a);
        let mut buf = [0u8; 8];
        assert_eq!(read_into(&mut b, &mut buf).await.expect("read"), Some(5));
        assert_eq!(&buf[..5], b"hello");
        assert!(read_into(&mut b, &mut buf).await.is_err(), "9 bytes into 8");
    }
}
