//! The bounded disk spool: messages that could not be sent wait here, oldest first, across restarts.
//!
//! Layout of the spool directory:
//! - `NNNNNNNNNNNNNNNNNNNN.seg`: append-only segment files, numbered in write order. Each starts with
//!   the 8-byte magic `DFSPOOL1`, then records: `body_len: u32 LE`, `crc32(body): u32 LE`, and the
//!   body `key_len: u16 LE, key, value`.
//! - `cursor`: `"<segment> <offset>"`, the first record not yet delivered (written by rename).
//! - `lock`: held with `flock` while a spool is open, so two agents never share a directory.
//!
//! The newest segment takes the writes; it is closed (fsynced) when it reaches the segment size.
//! When the spool would pass its byte cap, whole segments are dropped oldest first and the loss is
//! logged with counts. Segments are deleted once read past; an empty spool has no segments.
//! On open every segment is checked: a record whose CRC does not match is skipped (and counted),
//! a torn record at the end of a segment (a crash mid-write) is cut off.
//!
//! A failed write (a full disk or any I/O error, after part of the bytes or none) fails the push:
//! that record is not spooled, and the caller counts it lost. Nothing else is lost:
//! - A record write that failed part way is cut back off the segment (`ftruncate` to the end of
//!   the last whole record, which needs no free space), so the file and the length the spool counts
//!   agree and later records follow the earlier ones directly. Should the cut fail too, the segment
//!   is closed at that end (reads never go past it) and the next push starts a new one; the
//!   partial record is cut off as torn on the next open.
//! - A new segment whose header could not be written is deleted again and its number is not
//!   reused; the next push tries a new segment, so writing resumes as soon as there is space,
//!   without reopening. (If the deletion fails too, open removes the headerless file.)
//! - The cursor rewritten after an eviction may fail without failing the push: a cursor naming
//!   a deleted segment resumes at the oldest segment left, which is where the eviction moved it.

use std::collections::{HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Bytes at the start of every segment file.
pub const MAGIC: &[u8; 8] = b"DFSPOOL1";

/// Bytes of a record header (length and CRC).
pub const RECORD_HEADER: u64 = 8;

/// Largest record body accepted; a header announcing more is treated as garbage.
pub const MAX_RECORD: u64 = 16 * 1024 * 1024;

const SEGMENT_EXT: &str = "seg";
const CURSOR: &str = "cursor";
const LOCK: &str = "lock";

/// Size limits of a spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolOptions {
    /// Most bytes of segment files on disk.
    pub max_bytes: u64,
    /// A segment is closed and a new one started past this size; eviction drops whole segments.
    pub segment_bytes: u64,
}

impl SpoolOptions {
    /// A cap with segments of 1/16 of it (between 4 KiB and 16 MiB), so eviction drops little at once.
    pub fn with_max_bytes(max_bytes: u64) -> Self {
        Self {
            max_bytes,
            segment_bytes: (max_bytes / 16).clamp(4096, 16 * 1024 * 1024),
        }
    }
}

/// Why the spool failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file operation in the spool directory failed.
    #[error("spool {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Another process has the spool directory open.
    #[error("spool {0} is in use by another agent (each agent needs its own spool.dir)")]
    Locked(PathBuf),
    /// The size options cannot work.
    #[error("spool options: {0}")]
    Options(String),
    /// A record is larger than the spool can hold.
    #[error("a {size}-byte record does not fit a spool capped at {max} bytes")]
    TooLarge {
        /// Bytes the record would take.
        size: u64,
        /// The cap.
        max: u64,
    },
}

/// One spooled message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolRecord {
    /// Kafka message key (the VM id).
    pub key: String,
    /// Message value.
    pub value: Vec<u8>,
}

/// What one push had to drop to stay under the cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evicted {
    /// Undelivered records dropped.
    pub records: u64,
    /// Bytes of segment files deleted.
    pub bytes: u64,
}

/// Running totals of a spool since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Records appended.
    pub pushed: u64,
    /// Records read and committed (delivered).
    pub committed: u64,
    /// Undelivered records dropped by the cap.
    pub evicted_records: u64,
    /// Bytes dropped by the cap.
    pub evicted_bytes: u64,
    /// Records skipped because their CRC did not match, or segments unreadable.
    pub corrupt_records: u64,
    /// Bytes of torn records cut off the end of segments.
    pub torn_bytes: u64,
}

/// The writes into segment files. It writes straight through; in tests it can make chosen writes
/// fail part way, as a full disk does.
#[derive(Debug, Default)]
struct SegmentIo {
    #[cfg(test)]
    faults: tests::Faults,
}

impl SegmentIo {
    fn write_all(&mut self, file: &mut File, buf: &[u8]) -> std::io::Result<()> {
        #[cfg(test)]
        if let Some(written) = self.faults.write(buf.len()) {
            file.write_all(&buf[..written])?;
            return Err(rustix::io::Errno::NOSPC.into());
        }
        file.write_all(buf)
    }

    fn set_len(&mut self, file: &File, len: u64) -> std::io::Result<()> {
        #[cfg(test)]
        if self.faults.fail_cut {
            return Err(std::io::Error::other("injected: the cut fails"));
        }
        file.set_len(len)
    }
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    seq: u64,
    /// File length.
    bytes: u64,
    /// Valid records in the file.
    records: u64,
}

/// A position in the spool: the segment and the byte offset of the next record to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Pos {
    seq: u64,
    offset: u64,
}

/// A bounded on-disk FIFO of Kafka messages. Not thread-safe: one owner.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    options: SpoolOptions,
    /// Oldest first; the last one takes the writes.
    segments: VecDeque<Segment>,
    writer: Option<File>,
    io: SegmentIo,
    /// First undelivered record.
    read: Pos,
    /// Records before `read` in its segment.
    read_index: u64,
    /// Sequence number the next new segment gets.
    next_seq: u64,
    /// Positions after each record returned by the last `peek`, with their index in the segment.
    peeked: Vec<(Pos, u64)>,
    /// Records found corrupt by `peek` (already uncounted).
    bad: HashSet<Pos>,
    stats: SpoolStats,
    _lock: File,
}

/// What reading at a position found.
enum Next {
    /// A good record, and its total size on disk.
    Record(SpoolRecord, u64),
    /// A whole record whose CRC does not match: skip its size.
    Corrupt(u64),
    /// The clean end of the segment.
    End,
    /// A partial or implausible header or body: nothing after this offset is usable.
    Torn,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

fn read_next(r: &mut impl Read) -> std::io::Result<Next> {
    let mut header = [0_u8; RECORD_HEADER as usize];
    let mut got = 0;
    while got < header.len() {
        match r.read(&mut header[got..]) {
            Ok(0) => return Ok(if got == 0 { Next::End } else { Next::Torn }),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u64::from(u32::from_le_bytes([
        header[0], header[1], header[2], header[3],
    ]));
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if !(2..=MAX_RECORD).contains(&len) {
        return Ok(Next::Torn);
    }
    let mut body = vec![0_u8; len as usize];
    match r.read_exact(&mut body) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(Next::Torn),
        Err(e) => return Err(e),
    }
    let size = RECORD_HEADER + len;
    if crc32fast::hash(&body) != crc {
        return Ok(Next::Corrupt(size));
    }
    let key_len = usize::from(u16::from_le_bytes([body[0], body[1]]));
    if key_len > body.len() - 2 {
        return Ok(Next::Corrupt(size));
    }
    let value = body.split_off(2 + key_len);
    let key = String::from_utf8_lossy(&body[2..]).into_owned();
    Ok(Next::Record(SpoolRecord { key, value }, size))
}

fn encode(key: &str, value: &[u8]) -> Result<Vec<u8>, SpoolError> {
    let key = key.as_bytes();
    let key_len = u16::try_from(key.len()).map_err(|_| SpoolError::TooLarge {
        size: key.len() as u64,
        max: u64::from(u16::MAX),
    })?;
    let body_len = 2 + key.len() + value.len();
    if body_len as u64 > MAX_RECORD {
        return Err(SpoolError::TooLarge {
            size: body_len as u64,
            max: MAX_RECORD,
        });
    }
    let mut out = Vec::with_capacity(RECORD_HEADER as usize + body_len);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&key_len.to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    let crc = crc32fast::hash(&out[RECORD_HEADER as usize..]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Rejects a segment size that cannot hold a record or is more than half the byte cap.
fn check_options(options: SpoolOptions) -> Result<(), SpoolError> {
    let header = MAGIC.len() as u64;
    if options.segment_bytes <= header + RECORD_HEADER
        || options.segment_bytes > options.max_bytes / 2
    {
        return Err(SpoolError::Options(format!(
            "segment_bytes {} must be more than {} and at most half of max_bytes {}",
            options.segment_bytes,
            header + RECORD_HEADER,
            options.max_bytes
        )));
    }
    Ok(())
}

/// Creates and takes the `flock` on the spool's lock file, failing if another process holds it.
fn lock_dir(dir: &Path) -> Result<File, SpoolError> {
    let lock_path = dir.join(LOCK);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    if let Err(e) = rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        return Err(if e == rustix::io::Errno::WOULDBLOCK {
            SpoolError::Locked(dir.to_owned())
        } else {
            SpoolError::Io {
                path: lock_path,
                source: e.into(),
            }
        });
    }
    Ok(lock)
}

/// The sequence numbers of the segment files in `dir`, oldest first.
fn segment_seqs(dir: &Path) -> Result<Vec<u64>, SpoolError> {
    let mut seqs = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some(SEGMENT_EXT) {
            continue;
        }
        if let Some(seq) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<u64>().ok())
        {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, checks every segment and resumes at the
    /// first undelivered record.
    pub fn open(dir: &Path, options: SpoolOptions) -> Result<Self, SpoolError> {
        let header = MAGIC.len() as u64;
        check_options(options)?;
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock = lock_dir(dir)?;
        let seqs = segment_seqs(dir)?;

        let cursor = Self::read_cursor(dir);
        let mut spool = Self {
            dir: dir.to_owned(),
            options,
            segments: VecDeque::new(),
            writer: None,
            io: SegmentIo::default(),
            read: Pos {
                seq: seqs.first().copied().unwrap_or(0),
                offset: header,
            },
            read_index: 0,
            // Never reuse a number the cursor may name: a new segment must not look consumed.
            next_seq: seqs
                .last()
                .map_or(0, |s| s + 1)
                .max(cursor.map_or(0, |c| c.seq + 1)),
            peeked: Vec::new(),
            bad: HashSet::new(),
            stats: SpoolStats::default(),
            _lock: lock,
        };
        spool.recover(seqs, cursor)?;
        spool.drop_consumed()?;
        spool.open_writer()?;
        if !spool.is_empty() {
            tracing::info!(
                dir = %dir.display(),
                records = spool.len(),
                bytes = spool.bytes(),
                segments = spool.segments.len(),
                "spool has undelivered messages from a previous run"
            );
        }
        Ok(spool)
    }

    /// Checks the segments `seqs` (oldest first) and sets the read position from `cursor`.
    fn recover(&mut self, seqs: Vec<u64>, cursor: Option<Pos>) -> Result<(), SpoolError> {
        let mut resumed = false;
        for seq in seqs {
            let cut_at = cursor.filter(|c| c.seq == seq).map(|c| c.offset);
            let Some((segment, boundary)) = self.check_segment(seq, cut_at)? else {
                continue;
            };
            if let Some((offset, index)) = boundary {
                self.read = Pos { seq, offset };
                self.read_index = index;
                resumed = true;
            }
            self.segments.push_back(segment);
        }
        // Without a usable cursor, or when its segment is gone, resume at the oldest segment.
        if !resumed {
            self.read = Pos {
                seq: self.segments.front().map_or(self.next_seq, |s| s.seq),
                offset: MAGIC.len() as u64,
            };
            self.read_index = 0;
        }
        Ok(())
    }

    /// Opens the newest segment, if any, for appending.
    fn open_writer(&mut self) -> Result<(), SpoolError> {
        if let Some(last) = self.segments.back() {
            let path = self.segment_path(last.seq);
            let file = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(io_err(&path))?;
            self.writer = Some(file);
        }
        Ok(())
    }

    /// Validates one segment: counts its records, cuts a torn tail, removes it if unreadable.
    /// With `cursor`, also returns the record boundary at or before it and its record index.
    #[allow(clippy::type_complexity)]
    fn check_segment(
        &mut self,
        seq: u64,
        cursor: Option<u64>,
    ) -> Result<Option<(Segment, Option<(u64, u64)>)>, SpoolError> {
        let path = self.segment_path(seq);
        let file = File::open(&path).map_err(io_err(&path))?;
        let mut r = BufReader::new(file);
        let mut magic = [0_u8; 8];
        let magic_ok = r.read_exact(&mut magic).is_ok() && &magic == MAGIC;
        if !magic_ok {
            tracing::warn!(path = %path.display(), "spool segment has no valid header: removed");
            self.stats.corrupt_records += 1;
            fs::remove_file(&path).map_err(io_err(&path))?;
            return Ok(None);
        }
        let mut offset = MAGIC.len() as u64;
        let mut records = 0;
        let mut boundary = cursor.map(|_| (offset, 0));
        loop {
            if let (Some(c), Some(b)) = (cursor, boundary.as_mut())
                && offset <= c
            {
                *b = (offset, records);
            }
            match read_next(&mut r).map_err(io_err(&path))? {
                Next::Record(_, size) => {
                    offset += size;
                    records += 1;
                }
                Next::Corrupt(size) => {
                    tracing::warn!(path = %path.display(), offset, "spool record fails its CRC: skipped");
                    self.stats.corrupt_records += 1;
                    self.bad.insert(Pos { seq, offset });
                    offset += size;
                }
                Next::End => break,
                Next::Torn => {
                    let len = fs::metadata(&path).map_err(io_err(&path))?.len();
                    tracing::warn!(
                        path = %path.display(),
                        offset,
                        bytes = len - offset,
                        "spool segment ends in a torn record: cut off"
                    );
                    self.stats.torn_bytes += len - offset;
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io_err(&path))?;
                    f.set_len(offset).map_err(io_err(&path))?;
                    f.sync_all().map_err(io_err(&path))?;
                    break;
                }
            }
        }
        Ok(Some((
            Segment {
                seq,
                bytes: offset,
                records,
            },
            boundary,
        )))
    }

    fn read_cursor(dir: &Path) -> Option<Pos> {
        let text = fs::read_to_string(dir.join(CURSOR)).ok()?;
        let mut f = text.split_ascii_whitespace();
        let seq = f.next()?.parse().ok()?;
        let offset = f.next()?.parse().ok()?;
        Some(Pos { seq, offset })
    }

    fn write_cursor(&self) -> Result<(), SpoolError> {
        let tmp = self.dir.join("cursor.tmp");
        let path = self.dir.join(CURSOR);
        fs::write(&tmp, format!("{} {}\n", self.read.seq, self.read.offset))
            .map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    fn segment_path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.{SEGMENT_EXT}"))
    }

    /// Undelivered records.
    pub fn len(&self) -> u64 {
        let total: u64 = self
            .segments
            .iter()
            .filter(|s| s.seq >= self.read.seq)
            .map(|s| s.records)
            .sum();
        total.saturating_sub(self.read_index)
    }

    /// Whether every record has been delivered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of segment files on disk.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Running totals since open.
    pub fn stats(&self) -> SpoolStats {
        self.stats
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one message, dropping the oldest segments first if the cap requires it.
    /// The record is in the OS page cache when this returns; [`Spool::sync`] makes it durable.
    pub fn push(&mut self, key: &str, value: &[u8]) -> Result<Evicted, SpoolError> {
        let record = encode(key, value)?;
        let size = record.len() as u64;
        let header = MAGIC.len() as u64;
        if header + size > self.options.max_bytes - self.options.segment_bytes {
            return Err(SpoolError::TooLarge {
                size,
                max: self.options.max_bytes - self.options.segment_bytes - header,
            });
        }
        if self.writer.is_none()
            || self
                .segments
                .back()
                .is_none_or(|s| s.records > 0 && s.bytes + size > self.options.segment_bytes)
        {
            self.rotate()?;
        }
        let evicted = self.evict_for(size)?;
        let (seq, end) = self.segments.back().map_or((0, 0), |s| (s.seq, s.bytes));
        let path = self.segment_path(seq);
        let writer = self.writer.as_mut().ok_or_else(|| SpoolError::Io {
            path: path.clone(),
            source: std::io::Error::other("no open segment"),
        })?;
        if let Err(e) = self.io.write_all(writer, &record) {
            self.cut_failed_write(&path, end);
            return Err(io_err(&path)(e));
        }
        if let Some(last) = self.segments.back_mut() {
            last.bytes += size;
            last.records += 1;
        }
        self.stats.pushed += 1;
        Ok(evicted)
    }

    /// After a failed append, cuts off whatever part of the record reached the segment, so it ends
    /// at `end` (its last whole record) again. If that fails too, the segment is closed at `end`:
    /// reads stop there, the next push starts a new segment, and open cuts the partial record off.
    fn cut_failed_write(&mut self, path: &Path, end: u64) {
        let Some(writer) = self.writer.as_ref() else {
            return;
        };
        if let Err(e) = self.io.set_len(writer, end) {
            tracing::warn!(
                path = %path.display(),
                error = %e,
                "spool: cannot cut a failed write off the segment: closing it"
            );
            self.writer = None;
        }
    }

    /// Flushes the segment being written to disk (fsync).
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if let (Some(w), Some(last)) = (self.writer.as_ref(), self.segments.back()) {
            let path = self.segment_path(last.seq);
            w.sync_data().map_err(io_err(&path))?;
        }
        Ok(())
    }

    /// Closes the segment being written and starts the next one.
    fn rotate(&mut self) -> Result<(), SpoolError> {
        self.sync()?;
        let seq = self.next_seq;
        // Taken even if this fails: a file left behind must not block the next try.
        self.next_seq += 1;
        let path = self.segment_path(seq);
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        if let Err(e) = self.io.write_all(&mut file, MAGIC) {
            drop(file);
            if let Err(rm) = fs::remove_file(&path) {
                tracing::warn!(
                    path = %path.display(),
                    error = %rm,
                    "spool: cannot delete a segment without a header (open will)"
                );
            }
            return Err(io_err(&path)(e));
        }
        if self.segments.is_empty() {
            self.read = Pos {
                seq,
                offset: MAGIC.len() as u64,
            };
            self.read_index = 0;
        }
        self.segments.push_back(Segment {
            seq,
            bytes: MAGIC.len() as u64,
            records: 0,
        });
        self.writer = Some(file);
        Ok(())
    }

    /// Drops the oldest segments (never the one being written) until `size` more bytes fit.
    fn evict_for(&mut self, size: u64) -> Result<Evicted, SpoolError> {
        let mut evicted = Evicted::default();
        while self.bytes() + size > self.options.max_bytes && self.segments.len() > 1 {
            let Some(old) = self.segments.pop_front() else {
                break;
            };
            let unread = match old.seq.cmp(&self.read.seq) {
                std::cmp::Ordering::Less => 0,
                std::cmp::Ordering::Equal => old.records.saturating_sub(self.read_index),
                std::cmp::Ordering::Greater => old.records,
            };
            let path = self.segment_path(old.seq);
            fs::remove_file(&path).map_err(io_err(&path))?;
            evicted.records += unread;
            evicted.bytes += old.bytes;
            if self.read.seq <= old.seq {
                let next = self.segments.front().map_or(self.next_seq, |s| s.seq);
                self.read = Pos {
                    seq: next,
                    offset: MAGIC.len() as u64,
                };
                self.read_index = 0;
            }
        }
        if evicted.records > 0 || evicted.bytes > 0 {
            self.stats.evicted_records += evicted.records;
            self.stats.evicted_bytes += evicted.bytes;
            tracing::warn!(
                dropped = evicted.records,
                bytes = evicted.bytes,
                cap = self.options.max_bytes,
                dropped_total = self.stats.evicted_records,
                "spool full: dropped the oldest undelivered messages"
            );
            // Not worth failing the push for: a cursor naming a deleted segment resumes at the
            // oldest one left, the position the eviction just moved to.
            if let Err(e) = self.write_cursor() {
                tracing::warn!(error = %e, "spool: cannot update the cursor after an eviction");
            }
        }
        Ok(evicted)
    }

    /// Reads up to `max` undelivered records, oldest first, without consuming them: call
    /// [`Spool::commit`] once they are delivered. Each call starts again at the first undelivered one.
    pub fn peek(&mut self, max: usize) -> Result<Vec<SpoolRecord>, SpoolError> {
        self.peeked.clear();
        let mut out = Vec::new();
        let mut pos = self.read;
        let mut index = self.read_index;
        let seqs: Vec<Segment> = self
            .segments
            .iter()
            .filter(|s| s.seq >= self.read.seq)
            .copied()
            .collect();
        for seg in seqs {
            if out.len() >= max {
                break;
            }
            if seg.seq != pos.seq {
                pos = Pos {
                    seq: seg.seq,
                    offset: MAGIC.len() as u64,
                };
                index = 0;
            }
            if pos.offset >= seg.bytes {
                continue;
            }
            let path = self.segment_path(seg.seq);
            let mut file = File::open(&path).map_err(io_err(&path))?;
            file.seek(SeekFrom::Start(pos.offset))
                .map_err(io_err(&path))?;
            let mut r = BufReader::new(file).take(seg.bytes - pos.offset);
            while out.len() < max {
                match read_next(&mut r).map_err(io_err(&path))? {
                    Next::Record(rec, size) => {
                        pos.offset += size;
                        index += 1;
                        out.push(rec);
                        self.peeked.push((pos, index));
                    }
                    Next::Corrupt(size) => {
                        // Damaged since open (the disk changed under us): skip it, count it once.
                        if self.bad.insert(pos) {
                            tracing::warn!(path = %path.display(), offset = pos.offset, "spool record fails its CRC: skipped");
                            self.stats.corrupt_records += 1;
                            self.uncount(seg.seq, |s| s.records = s.records.saturating_sub(1));
                        }
                        pos.offset += size;
                    }
                    Next::End if pos.offset >= seg.bytes => break,
                    Next::End | Next::Torn => {
                        // Cut or garbled since open: nothing after this offset is readable.
                        tracing::warn!(
                            path = %path.display(),
                            offset = pos.offset,
                            bytes = seg.bytes - pos.offset,
                            "spool segment damaged: the rest of it is skipped"
                        );
                        self.stats.torn_bytes += seg.bytes - pos.offset;
                        let (end, good) = (pos.offset, index);
                        self.uncount(seg.seq, |s| {
                            s.bytes = end;
                            s.records = good;
                        });
                        if self.segments.back().is_some_and(|s| s.seq == seg.seq) {
                            self.writer = None; // the next push starts a new segment
                        }
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    fn uncount(&mut self, seq: u64, f: impl FnOnce(&mut Segment)) {
        if let Some(s) = self.segments.iter_mut().find(|s| s.seq == seq) {
            f(s);
        }
    }

    /// Marks the first `n` records of the last [`Spool::peek`] delivered; deletes segments read past.
    pub fn commit(&mut self, n: usize) -> Result<(), SpoolError> {
        if n == 0 {
            return Ok(());
        }
        let Some(&(pos, index)) = self.peeked.get(n - 1) else {
            return Err(SpoolError::Options(format!(
                "commit({n}) after a peek of {} records",
                self.peeked.len()
            )));
        };
        // Records evicted since the peek may have moved `read` past this point already.
        if pos > self.read {
            self.read = pos;
            self.read_index = index;
            self.stats.committed += n as u64;
        }
        self.peeked.drain(..n);
        // Cursor first, deletions after: a crash in between resends, it never skips.
        self.write_cursor()?;
        if self.drop_consumed()? {
            self.write_cursor()?;
        }
        Ok(())
    }

    /// Deletes segments before the read position, and everything once all is delivered; true if
    /// the read position moved (the spool is now empty).
    fn drop_consumed(&mut self) -> Result<bool, SpoolError> {
        let all_delivered = self.is_empty();
        while let Some(front) = self.segments.front().copied() {
            if front.seq >= self.read.seq && !all_delivered {
                break;
            }
            self.segments.pop_front();
            let path = self.segment_path(front.seq);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        let oldest = self.segments.front().map_or(self.next_seq, |s| s.seq);
        self.bad.retain(|p| p.seq >= oldest);
        if self.segments.is_empty() {
            self.writer = None;
            self.peeked.clear();
            self.read = Pos {
                seq: self.next_seq,
                offset: MAGIC.len() as u64,
            };
            self.read_index = 0;
            return Ok(true);
        }
        Ok(false)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Err(e) = self.sync() {
            tracing::warn!(error = %e, "spool: final sync failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> SpoolOptions {
        SpoolOptions {
            max_bytes: 4096,
            segment_bytes: 1024,
        }
    }

    fn value(i: usize) -> Vec<u8> {
        format!("{{\"n\":{i:04},\"pad\":\"{}\"}}", "x".repeat(60)).into_bytes()
    }

    fn drain(s: &mut Spool) -> Vec<usize> {
        let mut got = Vec::new();
        loop {
            let batch = s.peek(7).unwrap();
            if batch.is_empty() {
                return got;
            }
            for r in &batch {
                assert_eq!(r.key, "vm-1");
                let text = String::from_utf8(r.value.clone()).unwrap();
                got.push(text[5..9].parse().unwrap());
            }
            s.commit(batch.len()).unwrap();
        }
    }

    #[test]
    fn writes_and_drains_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), opts()).unwrap();
        assert!(s.is_empty());
        for i in 0..30 {
            s.push("vm-1", &value(i)).unwrap();
        }
        assert_eq!(s.len(), 30);
        assert!(s.segments.len() > 1, "rotated into several segments");
        // Peek does not consume.
        assert_eq!(s.peek(3).unwrap(), s.peek(3).unwrap());
        assert_eq!(drain(&mut s), (0..30).collect::<Vec<_>>());
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0, "a drained spool deletes its segments");
        // And it keeps working after being emptied.
        s.push("vm-1", &value(99)).unwrap();
        assert_eq!(drain(&mut s), [99]);
        assert_eq!(s.stats().committed, 31);
    }

    #[test]
    fn the_cap_drops_the_oldest_and_says_how_many() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), opts()).unwrap();
        let mut evicted = 0;
        for i in 0..100 {
            evicted += s.push("vm-1", &value(i)).unwrap().records;
            assert!(s.bytes() <= 4096, "{} bytes on disk", s.bytes());
        }
        assert!(evicted > 0);
        assert_eq!(s.stats().evicted_records, evicted);
        assert_eq!(
            s.len() + evicted,
            100,
            "every record is either kept or counted"
        );
        let got = drain(&mut s);
        assert_eq!(got.len() as u64, 100 - evicted);
        assert_eq!(
            got,
            (evicted as usize..100).collect::<Vec<_>>(),
            "newest kept, in order"
        );
    }

    #[test]
    fn eviction_while_reading_counts_only_unread_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), opts()).unwrap();
        for i in 0..20 {
            s.push("vm-1", &value(i)).unwrap();
        }
        let batch = s.peek(5).unwrap();
        s.commit(batch.len()).unwrap();
        let pending_before = s.len();
        let mut evicted = 0;
        let mut pushed = 0;
        while evicted == 0 {
            evicted = s.push("vm-1", &value(100 + pushed)).unwrap().records;
            pushed += 1;
        }
        assert_eq!(s.len(), pending_before + pushed as u64 - evicted);
        let got = drain(&mut s);
        assert_eq!(got.len() as u64, s.stats().committed - 5);
        assert_eq!(*got.last().unwrap(), 100 + pushed - 1);
    }

    #[test]
    fn reopening_resumes_after_the_last_commit() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Spool::open(dir.path(), opts()).unwrap();
            for i in 0..20 {
                s.push("vm-1", &value(i)).unwrap();
            }
            let batch = s.peek(12).unwrap();
            s.commit(batch.len()).unwrap();
            // Peeked but not committed: must come back after a restart.
            s.peek(3).unwrap();
            s.sync().unwrap();
        }
        let mut s = Spool::open(dir.path(), opts()).unwrap();
        assert_eq!(s.len(), 8);
        s.push("vm-1", &value(20)).unwrap();
        assert_eq!(drain(&mut s), (12..21).collect::<Vec<_>>());
    }

    #[test]
    fn a_spool_emptied_then_refilled_survives_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Spool::open(dir.path(), opts()).unwrap();
            for i in 0..15 {
                s.push("vm-1", &value(i)).unwrap();
            }
            assert_eq!(drain(&mut s).len(), 15);
        }
        {
            // A new run fills two segments and stops before delivering any of them.
            let mut s = Spool::open(dir.path(), opts()).unwrap();
            for i in 100..125 {
                s.push("vm-1", &value(i)).unwrap();
            }
        }
        let mut s = Spool::open(dir.path(), opts()).unwrap();
        assert_eq!(drain(&mut s), (100..125).collect::<Vec<_>>());
    }

    #[test]
    fn a_second_open_of_the_same_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _s = Spool::open(dir.path(), opts()).unwrap();
        let err = Spool::open(dir.path(), opts()).unwrap_err();
        assert!(matches!(err, SpoolError::Locked(_)), "{err}");
    }

    fn only_segment(dir: &Path) -> PathBuf {
        let segs: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        assert_eq!(segs.len(), 1);
        segs[0].clone()
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Spool::open(dir.path(), opts()).unwrap();
            for i in 0..3 {
                s.push("vm-1", &value(i)).unwrap();
            }
        }
        let seg = only_segment(dir.path());
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        let mut s = Spool::open(dir.path(), opts()).unwrap();
        assert_eq!(s.len(), 2);
        assert!(s.stats().torn_bytes > 0);
        s.push("vm-1", &value(3)).unwrap();
        assert_eq!(drain(&mut s), [0, 1, 3]);
    }

    #[test]
    fn a_corrupt_record_is_detected_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Spool::open(dir.path(), opts()).unwrap();
            for i in 0..4 {
                s.push("vm-1", &value(i)).unwrap();
            }
        }
        let seg = only_segment(dir.path());
        let mut bytes = fs::read(&seg).unwrap();
        let record = (bytes.len() - MAGIC.len()) / 4;
        // Flip a byte in the body of the third record, then in the last (the tail).
        bytes[MAGIC.len() + 2 * record + 20] ^= 0xff;
        let n = bytes.len();
        bytes[n - 3] ^= 0xff;
        fs::write(&seg, &bytes).unwrap();
        let mut s = Spool::open(dir.path(), opts()).unwrap();
        assert_eq!(s.stats().corrupt_records, 2);
        assert_eq!(s.len(), 2);
        assert_eq!(s.peek(10).unwrap().len(), 2);
        assert_eq!(s.len(), 2, "known corrupt records are not uncounted twice");
        s.push("vm-1", &value(4)).unwrap();
        assert_eq!(drain(&mut s), [0, 1, 4]);
        assert_eq!(s.stats().corrupt_records, 2);
    }

    #[test]
    fn damage_after_open_is_skipped_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), opts()).unwrap();
        for i in 0..6 {
            s.push("vm-1", &value(i)).unwrap();
        }
        let seg = only_segment(dir.path());
        let mut bytes = fs::read(&seg).unwrap();
        let record = (bytes.len() - MAGIC.len()) / 6;
        bytes[MAGIC.len() + record + 20] ^= 0xff; // the second record
        fs::write(&seg, &bytes).unwrap();
        assert_eq!(s.peek(10).unwrap().len(), 5);
        assert_eq!(s.peek(10).unwrap().len(), 5, "peeking again");
        assert_eq!(s.len(), 5, "counted once");
        // Now the file loses its last record and a half.
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len((MAGIC.len() + record * 4 + record / 2) as u64)
            .unwrap();
        assert_eq!(s.len(), 5);
        let got = s.peek(10).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(s.len(), 3);
        // New records go to a new segment, after the readable old ones.
        s.push("vm-1", &value(6)).unwrap();
        assert_eq!(drain(&mut s), [0, 2, 3, 6]);
        assert_eq!(s.stats().corrupt_records, 1);
        assert!(s.stats().torn_bytes > 0);
    }

    #[test]
    fn garbage_files_are_not_segments() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("00000000000000000007.seg"), b"not a spool").unwrap();
        fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
        let mut s = Spool::open(dir.path(), opts()).unwrap();
        assert!(s.is_empty());
        assert_eq!(s.stats().corrupt_records, 1);
        s.push("vm-1", &value(1)).unwrap();
        assert_eq!(drain(&mut s), [1]);
        assert!(dir.path().join("notes.txt").exists());
    }

    #[test]
    fn options_and_sizes_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let bad = SpoolOptions {
            max_bytes: 1000,
            segment_bytes: 900,
        };
        assert!(matches!(
            Spool::open(dir.path(), bad),
            Err(SpoolError::Options(_))
        ));
        let mut s = Spool::open(dir.path(), opts()).unwrap();
        let err = s.push("vm-1", &vec![b'x'; 5000]).unwrap_err();
        assert!(matches!(err, SpoolError::TooLarge { .. }), "{err}");
        assert_eq!(
            SpoolOptions::with_max_bytes(256 << 20).segment_bytes,
            16 << 20
        );
    }

    /// Failures injected into segment writes (see [`SegmentIo`]).
    #[derive(Debug, Default)]
    pub(super) struct Faults {
        /// Segment writes so far, headers and records.
        writes: u64,
        /// Writes, by number, that fail with ENOSPC after writing this many bytes.
        fail: Vec<(u64, usize)>,
        /// Cutting a failed write off the segment fails too.
        pub(super) fail_cut: bool,
    }

    impl Faults {
        /// How many bytes of the next `len`-byte write go through before it fails, if it fails.
        pub(super) fn write(&mut self, len: usize) -> Option<usize> {
            let n = self.writes;
            self.writes += 1;
            self.fail.iter().find(|f| f.0 == n).map(|f| f.1.min(len))
        }
    }

    /// Makes the next segment write fail with ENOSPC after `written` bytes.
    fn fail_next_write(s: &mut Spool, written: usize) {
        let n = s.io.faults.writes;
        s.io.faults.fail.push((n, written));
    }

    /// The segment files on disk are exactly the spool's, each exactly as long as it counts.
    fn assert_files_match(s: &Spool) {
        let mut files: Vec<(u64, u64)> = fs::read_dir(&s.dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .map(|p| {
                let seq = p.file_stem().unwrap().to_str().unwrap().parse().unwrap();
                (seq, fs::metadata(&p).unwrap().len())
            })
            .collect();
        files.sort_unstable();
        let counted: Vec<(u64, u64)> = s.segments.iter().map(|g| (g.seq, g.bytes)).collect();
        assert_eq!(
            files, counted,
            "segment files (seq, length) vs the spool's count"
        );
    }

    fn assert_disk_full(err: &SpoolError) {
        let SpoolError::Io { source, .. } = err else {
            panic!("not an I/O error: {err}");
        };
        assert_eq!(source.kind(), ErrorKind::StorageFull, "{err}");
    }

    fn record_len(i: usize) -> usize {
        encode("vm-1", &value(i)).unwrap().len()
    }

    #[test]
    fn a_record_write_that_fails_part_way_is_cut_off_and_reported_not_spooled() {
        // Nothing written, a partial header, the header alone, part of the body, all but a byte.
        for written in [0, 3, 8, 20, record_len(3) - 1] {
            let dir = tempfile::tempdir().unwrap();
            let mut s = Spool::open(dir.path(), opts()).unwrap();
            for i in 0..3 {
                s.push("vm-1", &value(i)).unwrap();
            }
            fail_next_write(&mut s, written);
            let err = s.push("vm-1", &value(3)).unwrap_err();
            assert_disk_full(&err);
            assert_files_match(&s);
            assert_eq!(s.len(), 3, "the failed record is not counted as spooled");
            for i in 4..6 {
                s.push("vm-1", &value(i)).unwrap();
            }
            assert_files_match(&s);
            assert_eq!((s.len(), s.stats().pushed), (5, 5));
            let live: Vec<_> = s.peek(10).unwrap();
            assert_eq!(live.len(), 5, "{written} bytes written: all 5 readable");
            assert_eq!(s.stats().corrupt_records, 0, "{written} bytes written");
            s.sync().unwrap();
            drop(s);
            let mut s = Spool::open(dir.path(), opts()).unwrap();
            assert_eq!((s.stats().corrupt_records, s.stats().torn_bytes), (0, 0));
            assert_eq!(drain(&mut s), [0, 1, 2, 4, 5], "{written} bytes written");
        }
    }

    #[test]
    fn a_segment_whose_header_fails_is_retried_by_the_next_push() {
        for written in [0, 3] {
            let dir = tempfile::tempdir().unwrap();
            let mut s = Spool::open(dir.path(), opts()).unwrap();
            // Fill the first segment: the next record needs a new one.
            let mut i = 0;
            while s
                .segments
                .back()
                .is_none_or(|g| g.bytes + record_len(i) as u64 <= opts().segment_bytes)
            {
                s.push("vm-1", &value(i)).unwrap();
                i += 1;
            }
            fail_next_write(&mut s, written);
            let err = s.push("vm-1", &value(i)).unwrap_err();
            assert_disk_full(&err);
            assert_eq!(s.segments.len(), 1);
            assert_files_match(&s); // no headerless segment left behind
            // The space is back: no restart needed.
            s.push("vm-1", &value(i + 1)).unwrap();
            s.push("vm-1", &value(i + 2)).unwrap();
            assert_eq!(s.segments.len(), 2);
            assert_files_match(&s);
            let mut want: Vec<usize> = (0..i).collect();
            want.extend([i + 1, i + 2]);
            assert_eq!(s.len(), want.len() as u64);
            assert_eq!(drain(&mut s), want, "{written} header bytes written");
            assert_eq!(s.stats().corrupt_records, 0);
        }
    }

    #[test]
    fn if_the_cut_fails_too_the_segment_is_closed_at_its_last_whole_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), opts()).unwrap();
        for i in 0..3 {
            s.push("vm-1", &value(i)).unwrap();
        }
        let end = s.bytes();
        s.io.faults.fail_cut = true;
        fail_next_write(&mut s, 30);
        assert_disk_full(&s.push("vm-1", &value(3)).unwrap_err());
        assert!(s.writer.is_none(), "closed");
        assert_eq!(s.segments.back().unwrap().bytes, end);
        let seg = only_segment(dir.path());
        assert_eq!(
            fs::metadata(&seg).unwrap().len(),
            end + 30,
            "the partial record stayed"
        );
        s.io.faults.fail_cut = false;
        s.push("vm-1", &value(4)).unwrap();
        s.push("vm-1", &value(5)).unwrap();
        assert_eq!(s.segments.len(), 2, "the next record went to a new segment");
        assert_eq!(s.peek(10).unwrap().len(), 5);
        assert_eq!(s.stats().torn_bytes, 0, "reads stop at the counted end");
        drop(s);
        let mut s = Spool::open(dir.path(), opts()).unwrap();
        assert_eq!(s.stats().torn_bytes, 30, "open cuts the partial record off");
        assert_eq!(s.stats().corrupt_records, 0);
        assert_eq!(drain(&mut s), [0, 1, 2, 4, 5]);
    }

    #[test]
    fn under_many_failed_writes_exactly_the_pushes_that_succeeded_read_back() {
        let dir = tempfile::tempdir().unwrap();
        // No eviction: every record reported spooled must come back.
        let options = SpoolOptions {
            max_bytes: 1 << 20,
            segment_bytes: 1024,
        };
        let mut s = Spool::open(dir.path(), options).unwrap();
        // Every 7th write fails, after a varying part of it (headers included).
        s.io.faults.fail = (0..2000)
            .map(|n| (n * 7 + 3, (n as usize * 13) % 100))
            .collect();
        let (mut spooled, mut lost, mut header_failures) = (Vec::new(), 0, 0);
        for i in 0..1000 {
            let (segments, next_seq) = (s.segments.len(), s.next_seq);
            match s.push("vm-1", &value(i)) {
                Ok(_) => spooled.push(i),
                Err(e) => {
                    assert_disk_full(&e);
                    lost += 1;
                    if s.next_seq > next_seq && s.segments.len() == segments {
                        header_failures += 1;
                    }
                }
            }
            assert_files_match(&s);
        }
        assert!(
            lost > 100 && header_failures > 0,
            "{lost} lost, {header_failures} headers"
        );
        assert_eq!(spooled.len() + lost, 1000);
        assert_eq!(
            (s.len(), s.stats().pushed),
            (spooled.len() as u64, spooled.len() as u64)
        );
        s.io.faults.fail.clear();
        assert_eq!(drain(&mut s), spooled);
        assert_eq!((s.stats().corrupt_records, s.stats().torn_bytes), (0, 0));
    }

    #[test]
    fn a_cursor_that_cannot_be_written_after_an_eviction_does_not_fail_the_push() {
        let dir = tempfile::tempdir().unwrap();
        let mut evicted = 0;
        {
            let mut s = Spool::open(dir.path(), opts()).unwrap();
            for i in 0..5 {
                s.push("vm-1", &value(i)).unwrap();
            }
            s.peek(2).unwrap();
            s.commit(2).unwrap(); // the cursor names the first segment
            fs::create_dir(dir.path().join("cursor.tmp")).unwrap(); // writing the cursor fails
            for i in 5..100 {
                evicted += s.push("vm-1", &value(i)).unwrap().records;
            }
            assert!(evicted > 0);
            assert_eq!(s.stats().evicted_records, evicted);
            assert_eq!(
                s.len() + evicted,
                98,
                "every record is either kept or counted"
            );
        }
        // The stale cursor names a deleted segment: the next run resumes at the oldest one left.
        fs::remove_dir(dir.path().join("cursor.tmp")).unwrap();
        let mut s = Spool::open(dir.path(), opts()).unwrap();
        assert_eq!(
            drain(&mut s),
            (2 + evicted as usize..100).collect::<Vec<_>>()
        );
    }

    /// A tmpfs mounted over a directory for one test, unmounted when dropped.
    struct Tmpfs(PathBuf);

    fn is_root() -> bool {
        use std::os::unix::fs::MetadataExt;
        fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
    }

    impl Tmpfs {
        /// Mounts a `size` tmpfs on `dir`; `None`, with a message, when not root (mount needs it).
        fn mount(dir: &Path, size: &str) -> Option<Self> {
            if !is_root() {
                eprintln!("SKIPPED: mounting a tmpfs to fill a real disk needs root");
                return None;
            }
            let out = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir)
                .output()
                .expect("running mount");
            assert!(
                out.status.success(),
                "mount -t tmpfs on {} failed as root: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            Some(Self(dir.to_owned()))
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            match std::process::Command::new("umount").arg(&self.0).output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "umount {}: {}",
                    self.0.display(),
                    String::from_utf8_lossy(&out.stderr)
                ),
                Err(e) => eprintln!("umount {}: {e}", self.0.display()),
            }
        }
    }

    /// Record `i`: its number, then padding of a size that varies from 300 to 3300 bytes, so
    /// records straddle page boundaries and some still fit in a disk's last partial page.
    fn sized(i: usize) -> Vec<u8> {
        let mut v = format!("{i:06}").into_bytes();
        v.resize(6 + 300 + (i * 7919) % 3000, b'x');
        v
    }

    fn numbers(records: &[SpoolRecord]) -> Vec<usize> {
        records
            .iter()
            .map(|r| std::str::from_utf8(&r.value[..6]).unwrap().parse().unwrap())
            .collect()
    }

    /// Fills a 2 MiB tmpfs, half taken by a filler file, with a spool of `segment_bytes` segments,
    /// then frees the filler. Returns the failed pushes of two kinds: record writes that started
    /// mid-page (so part of the record was written), and segment headers that could not be written.
    fn fill_a_real_disk(segment_bytes: u64) -> (usize, usize) {
        let dir = tempfile::tempdir().unwrap();
        let Some(_tmpfs) = Tmpfs::mount(dir.path(), "2m") else {
            return (0, 0);
        };
        let filler = dir.path().join("filler");
        fs::write(&filler, vec![0_u8; 1 << 20]).unwrap();
        let spool_dir = dir.path().join("spool");
        // A cap far past the disk: the disk fills first, nothing is evicted.
        let options = SpoolOptions {
            max_bytes: 64 << 20,
            segment_bytes,
        };
        let mut s = Spool::open(&spool_dir, options).unwrap();
        let (mut spooled, mut lost) = (Vec::new(), 0);
        let (mut short, mut headers) = (0, 0);
        let mut i = 0;
        while lost < 300 {
            match s.push("vm-1", &sized(i)) {
                Ok(evicted) => {
                    assert_eq!(evicted, Evicted::default());
                    spooled.push(i);
                }
                Err(e) => {
                    assert_disk_full(&e);
                    lost += 1;
                    let SpoolError::Io { path, .. } = e else {
                        unreachable!()
                    };
                    let seq: u64 = path.file_stem().unwrap().to_str().unwrap().parse().unwrap();
                    match s.segments.iter().find(|g| g.seq == seq) {
                        // Mid-page, the kernel writes what fits in the page, then fails.
                        Some(g) if g.bytes % 4096 != 0 => short += 1,
                        Some(_) => {}
                        None => headers += 1,
                    }
                }
            }
            // On disk is exactly what the spool counts: no partial record, no headerless file.
            assert_files_match(&s);
            i += 1;
        }
        assert!(
            spooled.len() > 100,
            "{} spooled before the disk filled",
            spooled.len()
        );
        assert_eq!(s.len(), spooled.len() as u64);
        // The space comes back: the same spool, not reopened, takes new records again.
        fs::remove_file(&filler).unwrap();
        for j in i..i + 200 {
            s.push("vm-1", &sized(j))
                .unwrap_or_else(|e| panic!("push {j} once space is back: {e}"));
            spooled.push(j);
        }
        assert_files_match(&s);
        eprintln!(
            "{segment_bytes}-byte segments on a full disk: {} spooled, {lost} lost \
             ({short} partial record writes, {headers} headers)",
            spooled.len()
        );
        assert_eq!(s.stats().pushed, spooled.len() as u64);
        // Every record reported spooled reads back once, in order; the failed ones never do.
        assert_eq!(numbers(&s.peek(usize::MAX).unwrap()), spooled);
        assert_eq!((s.stats().corrupt_records, s.stats().torn_bytes), (0, 0));
        // And the files on their own say the same.
        s.sync().unwrap();
        drop(s);
        let mut s = Spool::open(&spool_dir, options).unwrap();
        assert_eq!((s.stats().corrupt_records, s.stats().torn_bytes), (0, 0));
        assert_eq!(s.len(), spooled.len() as u64);
        let mut got = Vec::new();
        loop {
            let batch = s.peek(50).unwrap();
            if batch.is_empty() {
                break;
            }
            got.extend(numbers(&batch));
            s.commit(batch.len()).unwrap();
        }
        assert_eq!(got, spooled);
        assert!(s.is_empty());
        (short, headers)
    }

    #[test]
    fn a_real_full_disk_loses_only_the_failed_pushes_and_recovers_when_space_returns() {
        // With 16 KiB segments the disk (256 free pages) runs out at a segment's header; with
        // 20 KiB ones, part way through a record.
        let (short_a, headers_a) = fill_a_real_disk(16 << 10);
        let (short_b, headers_b) = fill_a_real_disk(20 << 10);
        if is_root() {
            assert!(
                short_a + short_b > 0 && headers_a + headers_b > 0,
                "both failures happened: {} partial record writes, {} headers",
                short_a + short_b,
                headers_a + headers_b
            );
        }
    }
}
