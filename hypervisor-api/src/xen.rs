//! Page events from Xen (feature `xen`): write and execute traps on guest pages, through the
//! [`vmi`] crate's Xen driver, turned into [`PageEvent`]s for the SVM to scan.
//!
//! **This runs only on a Xen host** (dom0, or a domain with the `privcmd` and event-channel
//! rights to monitor the guest, Xen ≥ 4.20). It is compile-checked by `.ci/run`
//! (`XEN_SYS_USE_BINDINGS=1`, the bindings shipped with `libxen-sys`); this project's test
//! machines have no Xen, so it has never been run. QEMU guests get page events from svm's
//! sweeper instead.
//!
//! The model, as in Bitdefender HVI: [`XenPageEvents::arm`] removes write (and optionally
//! execute) access from a page in the default view; the guest's next write or execute traps,
//! the instruction is emulated so the guest continues, the page is disarmed (one event per
//! page until the SVM re-arms it after scanning), and a [`PageEvent`] is returned.
//!
//! ```no_run
//! use hypervisor_api::{xen::XenPageEvents, Gfn, VmId};
//! use std::time::Duration;
//! let x = XenPageEvents::open(7, VmId::new("ward3-17")).unwrap();
//! x.arm(Gfn(0x1234), true).unwrap();
//! let mut events = Vec::new();
//! x.wait(Duration::from_millis(100), &mut events).unwrap();
//! for e in &events {
//!     // read the page (x.read_page), scan it, then re-arm it
//!     x.arm(e.gfn, true).unwrap();
//! }
//! ```

use crate::{Gfn, PageAccess, PageEvent, VmId};
use std::time::Duration;
use vmi::arch::amd64::{Amd64, EventReason};
use vmi::driver::xen::VmiXenDriver;
use vmi::driver::{VmiEventControl, VmiQueryProtection, VmiRead, VmiSetProtection, VmiViewControl};
use vmi::{MemoryAccess, VmiError, VmiEventResponse, VmiMappedPage};

/// Write and execute traps on one Xen domain.
pub struct XenPageEvents {
    driver: VmiXenDriver<Amd64>,
    vm: VmId,
}

impl std::fmt::Debug for XenPageEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XenPageEvents")
            .field("vm", &self.vm)
            .finish_non_exhaustive()
    }
}

impl XenPageEvents {
    /// Attach to Xen domain `domid`, known to the SVM as `vm`.
    pub fn open(domid: u32, vm: VmId) -> Result<Self, VmiError> {
        let driver = VmiXenDriver::<Amd64>::new(vmi::driver::xen::XenDomainId(domid))?;
        Ok(XenPageEvents { driver, vm })
    }

    /// Trap the next write to `gfn` (and, with `exec`, the next execution from it).
    pub fn arm(&self, gfn: Gfn, exec: bool) -> Result<(), VmiError> {
        let view = self.driver.default_view();
        let access = if exec {
            MemoryAccess::R
        } else {
            MemoryAccess::RX
        };
        self.driver.set_memory_access(vmi::Gfn(gfn.0), view, access)
    }

    /// Stop trapping `gfn`.
    pub fn disarm(&self, gfn: Gfn) -> Result<(), VmiError> {
        let view = self.driver.default_view();
        self.driver
            .set_memory_access(vmi::Gfn(gfn.0), view, MemoryAccess::RWX)
    }

    /// Whether `gfn` is armed.
    pub fn is_armed(&self, gfn: Gfn) -> Result<bool, VmiError> {
        let view = self.driver.default_view();
        let a = self.driver.memory_access(vmi::Gfn(gfn.0), view)?;
        Ok(a != MemoryAccess::RWX)
    }

    /// Read one guest page.
    pub fn read_page(&self, gfn: Gfn) -> Result<VmiMappedPage, VmiError> {
        self.driver.read_page(vmi::Gfn(gfn.0))
    }

    /// Wait up to `timeout` for traps; append one event per page touched (the page is
    /// disarmed: re-arm it after scanning).
    pub fn wait(&self, timeout: Duration, out: &mut Vec<PageEvent>) -> Result<(), VmiError> {
        let first = out.len();
        self.driver.wait_for_event(timeout, |event| {
            if let EventReason::MemoryAccess(m) = event.reason() {
                if let Some(e) = page_event(&self.vm, m.pa.0, m.access) {
                    out.push(e);
                }
            }
            // Let the guest's instruction complete despite the restricted access.
            VmiEventResponse::emulate()
        })?;
        let mut seen = std::collections::HashSet::new();
        let mut i = first;
        while let Some(e) = out.get(i) {
            if seen.insert(e.gfn) {
                self.disarm(e.gfn)?;
                i += 1;
            } else {
                out.remove(i);
            }
        }
        Ok(())
    }
}

/// The page event for a trapped access at guest-physical `pa`: a write wins over an
/// execute; a read alone is no event.
fn page_event(vm: &VmId, pa: u64, access: MemoryAccess) -> Option<PageEvent> {
    let kind = if access.contains(MemoryAccess::W) {
        PageAccess::Write
    } else if access.contains(MemoryAccess::X) {
        PageAccess::Execute
    } else {
        return None;
    };
    Some(PageEvent {
        vm: vm.clone(),
        gfn: Gfn(pa >> 12),
        access: kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traps_map_to_page_events() {
        let vm = VmId::new("x");
        let e = page_event(&vm, 0x1234_5678, MemoryAccess::W).unwrap();
        assert_eq!(e.gfn, Gfn(0x12345));
        assert_eq!(e.access, PageAccess::Write);
        let e = page_event(&vm, 0x1000, MemoryAccess::X).unwrap();
        assert_eq!(e.access, PageAccess::Execute);
        assert!(page_event(&vm, 0x1000, MemoryAccess::R).is_none());
    }
}
