//! Names no other test, concurrent run or earlier run uses. Servers (kinesalite, the databases) outlive a run and a
//! failed test leaves its stream or table behind: the process id, the time and a counter keep names apart.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

fn unique(prefix: &str, separator: char) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let n = N.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}{separator}{}{separator}{nanos}{separator}{n}", std::process::id())
}

/// A stream (or app, consumer, folder) name: `{prefix}-{pid}-{nanos}-{n}`.
pub fn unique_stream(prefix: &str) -> String {
    unique(prefix, '-')
}

/// A SQL table name: `{prefix}_{pid}_{nanos}_{n}`.
pub fn unique_table(prefix: &str) -> String {
    unique(prefix, '_')
}

/// A new folder `kc-{what}-{pid}-{nanos}-{n}` in the system's temporary folder.
///
/// # Panics
/// When the folder cannot be created.
pub fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique_stream(&format!("kc-{what}")));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}
