//! Reading without holding a buffer while waiting: an idle connection
//! gives its read buffer back, and what it reads next lands in its
//! thread's scratch buffer first, borrowed only within one poll.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, ReadBuf};

use crate::wire::READ_SIZE;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_SIZE].into_boxed_slice());
}

/// Polls one read of `io` and appends what came to `buf`, taking
/// [`READ_SIZE`] of room for it only then. `Ok(0)` is the end of the stream.
pub(super) fn poll_read_into<IO: AsyncRead + Unpin>(
    io: &mut IO,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    SCRATCH.with(|scratch| {
        // Taken by a read further up this thread's stack (an `io` that
        // reads another connection): read into a buffer of our own.
        let Ok(mut scratch) = scratch.try_borrow_mut() else {
            buf.reserve(READ_SIZE);
            return tokio_util::io::poll_read_buf(Pin::new(io), cx, buf);
        };
        let mut read = ReadBuf::new(&mut scratch[..]);
        match Pin::new(io).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) => {
                let filled = read.filled();
                if filled.is_empty() {
                    return Poll::Ready(Ok(0));
                }
                buf.reserve(READ_SIZE.max(filled.len()));
                buf.extend_from_slice(filled);
                Poll::Ready(Ok(filled.len()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_long_head_comes_in_one_read_and_only_then_takes_room() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let head = format!("GET / HTTP/1.1\r\nhost: a\r\ncookie: {}\r\n\r\n", "c".repeat(3000));
        client.write_all(head.as_bytes()).await.unwrap();
        let mut buf = BytesMut::new();
        let n = std::future::poll_fn(|cx| poll_read_into(&mut server, cx, &mut buf)).await.unwrap();
        assert_eq!(n, head.len());
        assert_eq!(&buf[..], head.as_bytes());
        assert!(buf.capacity() >= READ_SIZE);

        drop(client);
        let mut buf = BytesMut::new();
        let n = std::future::poll_fn(|cx| poll_read_into(&mut server, cx, &mut buf)).await.unwrap();
        assert_eq!(n, 0, "the end of the stream");
    }
}
