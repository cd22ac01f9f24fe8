//! A child process that is killed and reaped when its guard drops, on success, error or panic.

use std::process::{Child, ExitStatus};

pub(crate) struct ChildGuard {
    name: String,
    child: Child,
}

impl ChildGuard {
    pub(crate) fn new(name: impl Into<String>, child: Child) -> Self {
        Self { name: name.into(), child }
    }

    pub(crate) fn id(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The exit status if the process has ended, without blocking.
    pub(crate) fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return; // already ended and reaped
        }
        if let Err(err) = self.child.kill() {
            eprintln!("xtask: could not kill {} (pid {}): {err}", self.name, self.child.id());
        }
        match self.child.wait() {
            Ok(status) => println!("stopped {} (pid {}, {status})", self.name, self.child.id()),
            Err(err) => eprintln!("xtask: waiting for {} (pid {}): {err}", self.name, self.child.id()),
        }
    }
}
