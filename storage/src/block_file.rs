//! A file written in large aligned blocks by a thread of its own, bypassing the page cache where
//! the file system allows it (`O_DIRECT` on Linux).
//!
//! Why: an npy export is gigabytes of bytes that are already in their final order. Copying them
//! into the page cache was most of the export's time (the kernel's copy into freshly allocated
//! cache pages), and the fsync at the end then waited for all of it to reach the disk. A direct
//! write goes from our buffer to the disk, and the writer thread writes one block while the caller
//! fills the next, so producing rows and writing them overlap. The file's first block is held back
//! until `finish`, so a header at the start of the file can still be filled in at the end.
//!
//! Where `O_DIRECT` cannot be used (a file system that refuses it at open, or a write it rejects as
//! misaligned), the same blocks are written through the page cache instead.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use crate::error::{StorageError, StorageResult};

/// Direct writes need the buffer's address, the file offset and the length aligned to the logical
/// block size of the device; 4096 covers every common one.
const ALIGN: usize = 4096;

/// A buffer whose usable window starts at an `ALIGN`-aligned address. Made from a `Vec` with room
/// to spare rather than a custom allocation: moving it between threads moves the `Vec`, not its
/// heap memory, so the window stays aligned.
struct AlignedBlock {
    bytes: Vec<u8>,
    start: usize,
    capacity: usize,
    len: usize,
}

impl AlignedBlock {
    fn new(capacity: usize) -> AlignedBlock {
        let bytes = vec![0u8; capacity + ALIGN];
        let start = bytes.as_ptr().align_offset(ALIGN);
        AlignedBlock {
            bytes,
            start,
            capacity,
            len: 0,
        }
    }

    fn filled(&self) -> &[u8] {
        &self.bytes[self.start..self.start + self.len]
    }

    fn filled_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + self.len]
    }

    fn spare(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start + self.len..self.start + self.capacity]
    }

    /// The filled bytes rounded up to whole aligned units, as a direct write needs them; what lies
    /// past the filled part is cut off the file at the end.
    fn padded(&self) -> &[u8] {
        let len = self.len.div_ceil(ALIGN) * ALIGN;
        &self.bytes[self.start..self.start + len]
    }
}

/// A block to write at a file offset.
struct Job {
    offset: u64,
    block: AlignedBlock,
}

pub(crate) struct BlockFile {
    path: PathBuf,
    /// The block being filled, which starts at file offset `offset`.
    block: AlignedBlock,
    offset: u64,
    /// The file's first block, once full: written last, by `finish`.
    first: Option<AlignedBlock>,
    jobs: Option<SyncSender<Job>>,
    /// Blocks the writer thread is done with, to fill again.
    free: Receiver<AlignedBlock>,
    writer: Option<JoinHandle<io::Result<File>>>,
}

impl BlockFile {
    /// Creates the file at `path`; blocks of `block_bytes` (a multiple of 4096) are written as
    /// they fill.
    pub(crate) fn create(path: &Path, block_bytes: usize) -> StorageResult<BlockFile> {
        if block_bytes == 0 || !block_bytes.is_multiple_of(ALIGN) {
            return Err(StorageError::Internal(format!(
                "a block file's blocks are whole multiples of {ALIGN} bytes, not {block_bytes}"
            )));
        }
        let (file, direct) = open(path).map_err(|e| StorageError::io(path, e))?;
        // One block in the writer's hands while one is filled and the first is held back.
        let (jobs, queued) = sync_channel::<Job>(1);
        let (done, free) = sync_channel::<AlignedBlock>(2);
        done.send(AlignedBlock::new(block_bytes))
            .map_err(|_| StorageError::Internal("the block writer's queue is closed".into()))?;
        let thread_path = path.to_path_buf();
        let writer = std::thread::Builder::new()
            .name("quiver-block-writer".into())
            .spawn(move || write_blocks(file, direct, &thread_path, queued, done))
            .map_err(|e| StorageError::io(path, e))?;
        Ok(BlockFile {
            path: path.to_path_buf(),
            block: AlignedBlock::new(block_bytes),
            offset: 0,
            first: None,
            jobs: Some(jobs),
            free,
            writer: Some(writer),
        })
    }

    /// The unfilled rest of the current block, never empty; `advance` says how much was filled.
    pub(crate) fn spare(&mut self) -> &mut [u8] {
        self.block.spare()
    }

    /// Marks `filled` more bytes of `spare()` as written; a full block goes to the writer.
    pub(crate) fn advance(&mut self, filled: usize) -> StorageResult<()> {
        self.block.len = (self.block.len + filled).min(self.block.capacity);
        if self.block.len == self.block.capacity {
            self.hand_off()?;
        }
        Ok(())
    }

    /// Appends `bytes`, across blocks if need be.
    pub(crate) fn write_all(&mut self, mut bytes: &[u8]) -> StorageResult<()> {
        while !bytes.is_empty() {
            let spare = self.spare();
            let take = spare.len().min(bytes.len());
            spare[..take].copy_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            self.advance(take)?;
        }
        Ok(())
    }

    /// Sends the full current block to the writer (or holds it back, the first) and takes a free
    /// one to fill.
    fn hand_off(&mut self) -> StorageResult<()> {
        let offset = self.offset;
        let next = if offset == 0 {
            AlignedBlock::new(self.block.capacity)
        } else {
            match self.free.recv() {
                Ok(block) => block,
                Err(_) => return Err(self.writer_failure()),
            }
        };
        let full = std::mem::replace(&mut self.block, next);
        self.block.len = 0;
        self.offset += full.capacity as u64;
        if offset == 0 {
            self.first = Some(full);
            return Ok(());
        }
        self.send(Job {
            offset,
            block: full,
        })
    }

    fn send(&mut self, job: Job) -> StorageResult<()> {
        let sent = match &self.jobs {
            Some(jobs) => jobs.send(job).is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            Err(self.writer_failure())
        }
    }

    /// The writer thread's error, once it has stopped.
    fn writer_failure(&mut self) -> StorageError {
        self.jobs = None;
        match self.writer.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => StorageError::io(&self.path, e),
            Some(Err(_)) => StorageError::Internal(format!(
                "the thread writing {} panicked",
                self.path.display()
            )),
            _ => StorageError::Internal(format!(
                "the thread writing {} stopped",
                self.path.display()
            )),
        }
    }

    /// Writes what is left, lets `patch` change the start of the file (at most one block; the
    /// whole file when it is shorter), cuts the file to the bytes written and syncs it. Returns the
    /// file's length.
    pub(crate) fn finish(mut self, patch: impl FnOnce(&mut [u8])) -> StorageResult<u64> {
        let length = self.offset + self.block.len as u64;
        let tail = std::mem::replace(&mut self.block, AlignedBlock::new(ALIGN));
        let (mut first, tail) = match self.first.take() {
            Some(first) => (first, Some(tail)),
            None => (tail, None),
        };
        if let Some(tail) = tail.filter(|tail| tail.len > 0) {
            let offset = self.offset;
            self.send(Job {
                offset,
                block: tail,
            })?;
        }
        patch(first.filled_mut());
        self.send(Job {
            offset: 0,
            block: first,
        })?;
        self.jobs = None;
        let file = match self.writer.take().map(JoinHandle::join) {
            Some(Ok(Ok(file))) => file,
            Some(Ok(Err(e))) => return Err(StorageError::io(&self.path, e)),
            _ => {
                return Err(StorageError::Internal(format!(
                    "the thread writing {} stopped",
                    self.path.display()
                )));
            }
        };
        file.set_len(length)
            .and_then(|()| file.sync_all())
            .map_err(|e| StorageError::io(&self.path, e))?;
        Ok(length)
    }
}

/// For writers that take any `Write` (parquet, csv, Arrow IPC, tfrecords): bytes are copied into
/// the current block, which is what a `BufWriter` would do, and written by the block thread.
impl std::io::Write for BlockFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.write_all(bytes)
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(bytes.len())
    }

    /// Nothing to do: blocks are written as they fill, and the rest by `finish`.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Opens `path` for direct writes where the file system allows them; says whether it did.
fn open(path: &Path) -> io::Result<(File, bool)> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let direct = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(path);
        if let Ok(file) = direct {
            return Ok((file, true));
        }
    }
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    Ok((file, false))
}

/// The writer thread: writes each block at its offset and gives it back. A direct write the file
/// system rejects as misaligned (EINVAL) is retried, with every later one, through the page cache.
fn write_blocks(
    mut file: File,
    mut direct: bool,
    path: &Path,
    jobs: Receiver<Job>,
    free: SyncSender<AlignedBlock>,
) -> io::Result<File> {
    use std::os::unix::fs::FileExt;
    for Job { offset, block } in jobs {
        let bytes = if direct {
            block.padded()
        } else {
            block.filled()
        };
        match file.write_all_at(bytes, offset) {
            Ok(()) => {}
            Err(e) if direct && e.kind() == io::ErrorKind::InvalidInput => {
                file = OpenOptions::new().write(true).open(path)?;
                direct = false;
                file.write_all_at(block.filled(), offset)?;
            }
            Err(e) => return Err(e),
        }
        // The filler may be done and gone: a block nobody takes back is simply dropped.
        let _ = free.try_send(block);
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_land_at_their_offsets_and_the_first_is_patched_last() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blocks");
        let mut file = BlockFile::create(&path, ALIGN).unwrap();
        let mut expected = Vec::new();
        file.write_all(b"HEADER").unwrap();
        expected.extend_from_slice(b"HEADER");
        // Three blocks and a bit, written partly through spare/advance and partly by write_all.
        let mut value = 0u8;
        while expected.len() < 3 * ALIGN + 100 {
            let spare = file.spare();
            let take = spare.len().min(1000);
            for byte in &mut spare[..take] {
                *byte = value;
                expected.push(value);
                value = value.wrapping_add(7);
            }
            file.advance(take).unwrap();
            file.write_all(&[1, 2, 3]).unwrap();
            expected.extend_from_slice(&[1, 2, 3]);
        }
        let length = file
            .finish(|start| start[..6].copy_from_slice(b"header"))
            .unwrap();
        expected[..6].copy_from_slice(b"header");
        assert_eq!(length, expected.len() as u64);
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }

    #[test]
    fn a_file_shorter_than_a_block_is_patched_and_cut_to_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short");
        let mut file = BlockFile::create(&path, 2 * ALIGN).unwrap();
        file.write_all(b"0123456789").unwrap();
        file.finish(|start| start[0] = b'x').unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"x123456789");
        let empty = dir.path().join("empty");
        BlockFile::create(&empty, ALIGN)
            .unwrap()
            .finish(|start| assert!(start.is_empty()))
            .unwrap();
        assert_eq!(std::fs::read(&empty).unwrap(), b"");
    }
}
