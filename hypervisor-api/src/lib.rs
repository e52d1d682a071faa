//! Types shared between the security VM and whatever reports guest events to it: thin agents
//! in guests and hypervisor introspection.
//!
//! It holds the identity newtypes, the verdict a guest receives, and [`proto`], the thin-agent
//! wire protocol (version 1; byte layouts in `docs/protocol.md`), and [`clamd`], the parsing
//! of the clamd protocol that `svm serve` also speaks (command lines and `INSTREAM` chunks).
//!
//! ```
//! use hypervisor_api::{Action, Verdict, VerdictDetail, VmId};
//!
//! let vm = VmId::new("ward-3-client-17");
//! let v = Verdict::new(Action::Deny, VerdictDetail::Infected { names: vec!["Eicar-Test-Signature".into()] }, 7);
//! assert!(v.is_deny());
//! assert_eq!(vm.as_str(), "ward-3-client-17");
//! ```
//!
//! # Current limitations
//! - Memory sources (module `mem`): dump files and RAM files (feature `dump`), live QEMU RAM
//!   files with their layout from QMP (feature `qemu`), and a vmi-rs driver over them
//!   (feature `vmi`). QEMU has no access traps: page events come from svm's sweeper.
//! - The protocol has no authentication of its own: who a guest is comes from the transport.

// Without `dump` there is no unsafe code at all; `mem` maps dump files (one SAFETY block).
#![cfg_attr(not(feature = "dump"), forbid(unsafe_code))]

/// The clamd protocol without I/O: command lines, command names and `INSTREAM` chunks,
/// bounded and panic-free on a hostile client's bytes.
pub mod clamd;
#[cfg(feature = "dump")]
pub mod mem;
pub mod proto;
#[cfg(feature = "qemu")]
pub mod qmp;
#[cfg(feature = "vmi")]
pub mod vmi_driver;
#[cfg(feature = "xen")]
pub mod xen;

use serde::{Deserialize, Serialize};

/// A virtual machine, as named in the SVM's configuration (never as claimed by the guest).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VmId(String);

impl VmId {
    /// Wrap a configured VM name.
    pub fn new(name: impl Into<String>) -> Self {
        VmId(name.into())
    }
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A guest frame number (guest-physical address >> 12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Gfn(pub u64);

/// A guest-physical address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Gpa(pub u64);

impl Gpa {
    /// The frame holding this address.
    pub fn gfn(self) -> Gfn {
        Gfn(self.0 >> 12)
    }
}

/// How a guest page was touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PageAccess {
    /// Written (a write trap, e.g. Xen's memory-access events).
    Write,
    /// Executed (an execute trap).
    Execute,
    /// Its content changed since it was last seen (QEMU has no traps: the sweeper compares
    /// page hashes).
    Changed,
}

/// A guest page to scan: which VM, where, and why.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PageEvent {
    /// The VM.
    pub vm: VmId,
    /// The page's guest frame.
    pub gfn: Gfn,
    /// The access that raised the event.
    pub access: PageAccess,
}

/// What the guest is told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let the access proceed.
    Allow,
    /// Refuse the access.
    Deny,
}

/// Why the verdict is what it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum VerdictDetail {
    /// Scanned; nothing matched.
    Clean,
    /// Scanned; these signatures matched.
    Infected {
        /// Signature names.
        names: Vec<String>,
    },
    /// Not scanned; the group's policy decided the action.
    Unscanned {
        /// Why no scan happened.
        reason: String,
    },
}

/// The answer to one guest event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// Allow or deny.
    pub action: Action,
    /// Clean, infected or unscanned.
    pub detail: VerdictDetail,
    /// The signature set version the verdict was made with.
    pub sigset_version: u64,
}

impl Verdict {
    /// A verdict.
    pub fn new(action: Action, detail: VerdictDetail, sigset_version: u64) -> Self {
        Verdict {
            action,
            detail,
            sigset_version,
        }
    }
    /// Whether the access is refused.
    pub fn is_deny(&self) -> bool {
        self.action == Action::Deny
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn shared_types_are_send_sync() {
        assert_send_sync::<VmId>();
        assert_send_sync::<Verdict>();
    }

    #[test]
    fn gpa_to_gfn() {
        assert_eq!(Gpa(0x1234_5678).gfn(), Gfn(0x12345));
    }

    #[test]
    fn verdict_json_shape() {
        let v = Verdict::new(
            Action::Deny,
            VerdictDetail::Infected {
                names: vec!["X".into()],
            },
            3,
        );
        let j = serde_json::to_value(&v).unwrap();
        assert_eq!(j["action"], "deny");
        assert_eq!(j["detail"]["status"], "infected");
        assert_eq!(j["sigset_version"], 3);
    }
}
