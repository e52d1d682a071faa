//! A [`vmi`] (vmi-rs) driver over a live QEMU guest's RAM file (feature `vmi`), so the vmi-rs
//! ecosystem (`VmiCore`, its address translation and OS layers) can be layered on the same
//! source the SVM's sweeper reads.
//!
//! It implements the capabilities this source has: [`VmiDriver`] and [`VmiRead`] (guest-physical
//! pages, read with `pread` through the guest's RAM layout). QEMU without KVM has no memory
//! access traps, no views and no register access through a RAM file, so the other capability
//! traits are not implemented; a program that needs them will not compile against this driver,
//! rather than fail at run time.
//!
//! ```no_run
//! use hypervisor_api::mem::LiveRam;
//! use hypervisor_api::vmi_driver::QemuRamDriver;
//! use vmi::{Pa, VmiCore};
//! let ram = LiveRam::open("/dev/shm/vm1.ram".as_ref(), None).unwrap();
//! let core = VmiCore::new(QemuRamDriver::new(ram, 1)).unwrap();
//! let mut buf = [0u8; 16];
//! core.read(Pa(0x10_0000), &mut buf).unwrap();
//! ```

use crate::mem::{LiveRam, PhysRead};
use vmi::arch::amd64::Amd64;
use vmi::driver::{VmiDriver, VmiRead};
use vmi::{Gfn, VmiError, VmiInfo, VmiMappedPage};

/// Guest page size.
const PAGE: u64 = 4096;

/// A read-only vmi-rs driver for a QEMU guest whose RAM is a `memory-backend-file`.
#[derive(Debug)]
pub struct QemuRamDriver {
    ram: LiveRam,
    vcpus: u16,
}

impl QemuRamDriver {
    /// A driver over `ram` (with its layout, from [`crate::qmp::Qmp::ram_layout`] for guests
    /// with RAM above 4 GiB) for a guest with `vcpus` virtual CPUs.
    pub fn new(ram: LiveRam, vcpus: u16) -> Self {
        QemuRamDriver { ram, vcpus }
    }

    /// The RAM source.
    pub fn ram(&self) -> &LiveRam {
        &self.ram
    }
}

impl VmiDriver for QemuRamDriver {
    type Architecture = Amd64;

    fn info(&self) -> Result<VmiInfo, VmiError> {
        let top = self
            .ram
            .regions()
            .iter()
            .map(|r| r.gpa + r.len)
            .max()
            .unwrap_or(0);
        Ok(VmiInfo {
            page_size: PAGE,
            page_shift: 12,
            max_gfn: Gfn(top.div_ceil(PAGE).saturating_sub(1)),
            vcpus: self.vcpus,
        })
    }
}

impl VmiRead for QemuRamDriver {
    fn read_page(&self, gfn: Gfn) -> Result<VmiMappedPage, VmiError> {
        let gpa = gfn.0.checked_mul(PAGE).ok_or(VmiError::OutOfBounds)?;
        let mut page = vec![0u8; PAGE as usize];
        self.ram.read_phys(gpa, &mut page).map_err(|e| match e {
            crate::mem::MemError::NotRam { .. } => VmiError::OutOfBounds,
            e => VmiError::driver(e),
        })?;
        Ok(VmiMappedPage::new(page))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::mem::Region;
    use vmi::{Pa, VmiCore};

    #[test]
    fn vmi_core_reads_guest_physical_memory_through_the_layout() {
        let mut ram = vec![0u8; 4 * 4096];
        ram[2 * 4096 - 3..2 * 4096 + 3].copy_from_slice(b"across");
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), &ram).unwrap();
        let layout = vec![
            Region {
                gpa: 0,
                len: 4096,
                file_offset: 0,
            },
            Region {
                gpa: 0x1_0000_0000,
                len: 3 * 4096,
                file_offset: 4096,
            },
        ];
        let live = LiveRam::open(f.path(), Some(layout)).unwrap();
        let core = VmiCore::new(QemuRamDriver::new(live, 2)).unwrap();
        let info = core.info().unwrap();
        assert_eq!(info.max_gfn, Gfn(0x10_0002));
        assert_eq!(info.vcpus, 2);
        // A read across a page boundary, at 4 GiB.
        let mut b = [0u8; 6];
        core.read(Pa(0x1_0000_0000 + 4096 - 3), &mut b).unwrap();
        assert_eq!(&b, b"across");
        // The hole between the regions is not readable.
        assert!(core.read(Pa(0x2000), &mut b).is_err());
    }
}
