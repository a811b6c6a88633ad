//! The local broker's log on disk, for tests that need Kafka to serve bytes no client could have
//! produced: [`corrupt_compressed_batch`] overwrites the compressed records of one record batch in its
//! segment file, so every fetch of it fails to decompress (the broker serves fetches from the file, through
//! the page cache, and checks nothing on the way out).
//!
//! Where the log is: `log.dirs` of the broker's `server.properties` in `COURIER_KAFKA_DIR` (what
//! `scripts/kafka.sh` honours; relative to the workspace root), else in the workspace's own
//! `target/kafka/` (where `scripts/kafka.sh` puts it). A log that cannot be found fails the test with what was tried: never a silent skip.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Record batch v2 header (Kafka's `DefaultRecordBatch`): baseOffset 8, batchLength 4,
/// partitionLeaderEpoch 4, magic 1, crc 4, attributes 2, lastOffsetDelta 4, baseTimestamp 8,
/// maxTimestamp 8, producerId 8, producerEpoch 2, baseSequence 4, recordCount 4: 61 bytes, then the
/// records (compressed as one block when the attributes name a codec).
const HEADER: usize = 61;
/// Bytes before `batchLength` counts from: baseOffset and batchLength themselves.
const LOG_OVERHEAD: usize = 12;
const MAGIC_AT: usize = 16;
const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const COMPRESSION_MASK: u16 = 0x07;

/// One record batch as it lies in a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOnDisk {
    pub base_offset: i64,
    pub last_offset: i64,
    /// The codec's number (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    pub codec: u16,
    /// Where the batch starts in the file, and its size with its header.
    pub position: u64,
    pub size: usize,
}

/// The directory of `topic`/`partition` in the local broker's log.
pub fn partition_dir(topic: &str, partition: i32) -> PathBuf {
    log_dir().join(format!("{topic}-{partition}"))
}

/// The broker's `log.dirs` (the first one), from its `server.properties`. Panics, saying where it looked
/// and how to point the tests at the broker, when it cannot be found.
pub fn log_dir() -> PathBuf {
    // A relative COURIER_KAFKA_DIR is taken from the workspace root, where the Makefile runs
    // scripts/kafka.sh (a test's working directory is its crate's).
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let kafka_dir = std::env::var_os("COURIER_KAFKA_DIR")
        .map_or_else(|| root.join("target/kafka"), |dir| root.join(dir));
    let properties = kafka_dir.join("server.properties");
    let text = std::fs::read_to_string(&properties).unwrap_or_else(|e| {
        panic!(
            "cannot read the local broker's configuration {} ({e}): this test edits the broker's log \
             on disk. Set COURIER_KAFKA_DIR to the directory scripts/kafka.sh runs the broker from \
             (the one holding server.properties, e.g. /path/to/clone/target/kafka).",
            properties.display()
        )
    });
    let dirs = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("log.dirs="))
        .next_back()
        .unwrap_or_else(|| panic!("{} names no log.dirs", properties.display()));
    let first = dirs.split(',').next().unwrap_or(dirs).trim();
    kafka_dir.join(first)
}

/// Every record batch of the segment files of `dir`, in offset order.
pub fn batches(dir: &Path) -> Vec<BatchOnDisk> {
    let mut found = Vec::new();
    for segment in segments(dir) {
        let bytes = std::fs::read(&segment)
            .unwrap_or_else(|e| panic!("read segment {}: {e}", segment.display()));
        let mut position = 0usize;
        while position + HEADER <= bytes.len() {
            let at = |offset: usize, n: usize| &bytes[position + offset..position + offset + n];
            let base_offset = i64::from_be_bytes(at(0, 8).try_into().expect("8 bytes"));
            let length = i32::from_be_bytes(at(8, 4).try_into().expect("4 bytes"));
            let Ok(length) = usize::try_from(length) else {
                break;
            };
            let size = LOG_OVERHEAD + length;
            if length == 0 || position + size > bytes.len() {
                // Preallocated tail of the active segment, or a batch being written: not a batch yet.
                break;
            }
            assert_eq!(
                at(MAGIC_AT, 1)[0],
                2,
                "only record batch v2 is expected in {}",
                segment.display()
            );
            let attributes = u16::from_be_bytes(at(ATTRIBUTES_AT, 2).try_into().expect("2 bytes"));
            let delta =
                i32::from_be_bytes(at(LAST_OFFSET_DELTA_AT, 4).try_into().expect("4 bytes"));
            found.push(BatchOnDisk {
                base_offset,
                last_offset: base_offset + i64::from(delta),
                codec: attributes & COMPRESSION_MASK,
                position: position as u64,
                size,
            });
            position += size;
        }
    }
    found
}

/// Overwrites the compressed records of the batch of `topic`/`partition` that holds `offset` (its header
/// left intact), so that the broker serves a batch no client can decompress. Returns the batch. Panics
/// when no compressed batch holds `offset`.
pub fn corrupt_compressed_batch(topic: &str, partition: i32, offset: i64) -> BatchOnDisk {
    let dir = partition_dir(topic, partition);
    let batch = batches(&dir)
        .into_iter()
        .find(|b| (b.base_offset..=b.last_offset).contains(&offset))
        .unwrap_or_else(|| panic!("no record batch holds offset {offset} in {}", dir.display()));
    assert_ne!(
        batch.codec, 0,
        "the batch holding offset {offset} is not compressed: {batch:?}"
    );
    let segment = segments(&dir)
        .into_iter()
        .rev()
        .find(|s| segment_base(s) <= batch.base_offset)
        .expect("the segment holding the batch");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&segment)
        .unwrap_or_else(|e| panic!("open {} for writing: {e}", segment.display()));
    let payload = batch.size - HEADER;
    let mut original = vec![0u8; payload];
    file.seek(SeekFrom::Start(batch.position + HEADER as u64))
        .and_then(|_| file.read_exact(&mut original))
        .unwrap_or_else(|e| {
            panic!(
                "read the batch at {} of {}: {e}",
                batch.position,
                segment.display()
            )
        });
    // Every byte changed: whatever the codec, its magic and framing no longer parse.
    let corrupt: Vec<u8> = original.iter().map(|b| !b).collect();
    file.seek(SeekFrom::Start(batch.position + HEADER as u64))
        .and_then(|_| file.write_all(&corrupt))
        .and_then(|()| file.sync_data())
        .unwrap_or_else(|e| panic!("corrupt the batch in {}: {e}", segment.display()));
    batch
}

/// The segment files (`*.log`) of a partition directory, by base offset.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| {
            panic!(
                "the partition's log {} cannot be listed ({e}): is the test talking to the broker \
                 whose log.dirs this is (KAFKA_BROKERS, COURIER_KAFKA_DIR)?",
                dir.display()
            )
        })
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    found.sort_by_key(|path| segment_base(path));
    found
}

fn segment_base(segment: &Path) -> i64 {
    segment
        .file_stem()
        .and_then(|stem| stem.to_str())
        .and_then(|stem| stem.parse().ok())
        .unwrap_or(0)
}
