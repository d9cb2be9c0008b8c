//! A task's byte stream: a one-shot unix socket whose bytes are read to the end.

use std::io;
use std::os::unix::net::UnixStream;

use crate::wire::unix_url_path;

/// Opens the stream at `url` (`unix:///path`); read it to the end. A stream can be opened
/// once: the provider removes its socket when the first reader connects.
pub fn open(url: &str) -> io::Result<UnixStream> {
    let path =
        unix_url_path(url).map_err(|reason| io::Error::new(io::ErrorKind::InvalidInput, reason))?;
    UnixStream::connect(&path)
        .map_err(|err| io::Error::new(err.kind(), format!("stream {url}: {err}")))
}
