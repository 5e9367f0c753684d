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

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, checks every segment and resumes at the
    /// first undelivered record.
    pub fn open(dir: &Path, options: SpoolOptions) -> Result<Self, SpoolError> {
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
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock_path = dir.join(LOCK);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        if let Err(e) =
            rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        {
            return Err(if e == rustix::io::Errno::WOULDBLOCK {
                SpoolError::Locked(dir.to_owned())
            } else {
                SpoolError::Io {
                    path: lock_path,
                    source: e.into(),
                }
            });
        }

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

        let cursor = Self::read_cursor(dir);
        let mut spool = Self {
            dir: dir.to_owned(),
            options,
            segments: VecDeque::new(),
            writer: None,
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
        let mut resumed = false;
        for seq in seqs {
            let cut_at = cursor.filter(|c| c.seq == seq).map(|c| c.offset);
            let Some((segment, boundary)) = spool.check_segment(seq, cut_at)? else {
                continue;
            };
            if let Some((offset, index)) = boundary {
                spool.read = Pos { seq, offset };
                spool.read_index = index;
                resumed = true;
            }
            spool.segments.push_back(segment);
        }
        // Without a usable cursor, or when its segment is gone, resume at the oldest segment.
        if !resumed {
            spool.read = Pos {
                seq: spool.segments.front().map_or(spool.next_seq, |s| s.seq),
                offset: header,
            };
            spool.read_index = 0;
        }
        spool.drop_consumed()?;
        if let Some(last) = spool.segments.back() {
            let path = spool.segment_path(last.seq);
            let file = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(io_err(&path))?;
            spool.writer = Some(file);
        }
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
        let seq = self.segments.back().map_or(0, |s| s.seq);
        let path = self.segment_path(seq);
        let writer = self.writer.as_mut().ok_or_else(|| SpoolError::Io {
            path: path.clone(),
            source: std::io::Error::other("no open segment"),
        })?;
        writer.write_all(&record).map_err(io_err(&path))?;
        if let Some(last) = self.segments.back_mut() {
            last.bytes += size;
            last.records += 1;
        }
        self.stats.pushed += 1;
        Ok(evicted)
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
        let path = self.segment_path(seq);
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.write_all(MAGIC).map_err(io_err(&path))?;
        self.next_seq += 1;
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
            self.write_cursor()?;
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
}
