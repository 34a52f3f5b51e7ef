//! Syscall ABIs a filter can meet, how the kernel tags them in `seccomp_data`, and the syscall
//! number tables used to resolve profile names for each of them.
//!
//! A seccomp filter sees every syscall the thread makes, whatever instruction set or calling
//! convention it used, so the filter must dispatch on `seccomp_data.arch` (and on x86_64 on the
//! x32 bit of `nr`) before it looks at the number: the same number means different syscalls in
//! different ABIs.

use std::str::FromStr;

use oci_spec::runtime::Arch;

/// `AUDIT_ARCH_*` from `<linux/audit.h>`: the value the kernel stores in `seccomp_data.arch`.
/// `EM_* | __AUDIT_ARCH_64BIT (0x8000_0000) | __AUDIT_ARCH_LE (0x4000_0000)`.
pub(crate) const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
pub(crate) const AUDIT_ARCH_I386: u32 = 3 | 0x4000_0000;
pub(crate) const AUDIT_ARCH_AARCH64: u32 = 183 | 0x8000_0000 | 0x4000_0000;
pub(crate) const AUDIT_ARCH_ARM: u32 = 40 | 0x4000_0000;
pub(crate) const AUDIT_ARCH_RISCV64: u32 = 243 | 0x8000_0000 | 0x4000_0000;

/// x32 syscalls enter through the x86_64 entry point with this bit set in the number.
pub(crate) const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// A syscall ABI: an instruction set plus a syscall numbering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Abi {
    X86_64,
    X32,
    I386,
    Aarch64,
    Arm,
    Riscv64,
}

impl Abi {
    /// What the kernel reports in `seccomp_data.arch` for calls of this ABI.
    pub(crate) fn audit_arch(self) -> u32 {
        match self {
            // x32 shares the x86_64 entry point; only the number's x32 bit tells them apart.
            Abi::X86_64 | Abi::X32 => AUDIT_ARCH_X86_64,
            Abi::I386 => AUDIT_ARCH_I386,
            Abi::Aarch64 => AUDIT_ARCH_AARCH64,
            Abi::Arm => AUDIT_ARCH_ARM,
            Abi::Riscv64 => AUDIT_ARCH_RISCV64,
        }
    }

    /// The OCI / libseccomp name, for error messages.
    pub(crate) fn scmp_name(self) -> &'static str {
        match self {
            Abi::X86_64 => "SCMP_ARCH_X86_64",
            Abi::X32 => "SCMP_ARCH_X32",
            Abi::I386 => "SCMP_ARCH_X86",
            Abi::Aarch64 => "SCMP_ARCH_AARCH64",
            Abi::Arm => "SCMP_ARCH_ARM",
            Abi::Riscv64 => "SCMP_ARCH_RISCV64",
        }
    }

    /// The number `seccomp_data.nr` carries for `name` in this ABI, or `None` when the ABI has
    /// no such syscall (e.g. `_llseek` on x86_64, or `rt_sigaction`'s x86_64 number on x32).
    pub(crate) fn syscall_nr(self, name: &str) -> Option<u32> {
        match self {
            Abi::X86_64 => table_nr::<syscalls::x86_64::Sysno>(name),
            Abi::X32 => x32_nr(name),
            Abi::I386 => table_nr::<syscalls::x86::Sysno>(name),
            Abi::Aarch64 => table_nr::<syscalls::aarch64::Sysno>(name),
            Abi::Arm => table_nr::<syscalls::arm::Sysno>(name).or_else(|| arm_private_nr(name)),
            Abi::Riscv64 => table_nr::<syscalls::riscv64::Sysno>(name),
        }
    }
}

/// The architectures Tote can filter natively (those seccompiler can generate code for).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Host {
    X86_64,
    Aarch64,
    Riscv64,
}

impl Host {
    /// The architecture this binary runs on, if Tote can filter it.
    pub(crate) fn current() -> Option<Host> {
        if cfg!(target_arch = "x86_64") {
            Some(Host::X86_64)
        } else if cfg!(target_arch = "aarch64") {
            Some(Host::Aarch64)
        } else if cfg!(target_arch = "riscv64") {
            Some(Host::Riscv64)
        } else {
            None
        }
    }

    pub(crate) fn native_abi(self) -> Abi {
        match self {
            Host::X86_64 => Abi::X86_64,
            Host::Aarch64 => Abi::Aarch64,
            Host::Riscv64 => Abi::Riscv64,
        }
    }

    pub(crate) fn target_arch(self) -> seccompiler::TargetArch {
        match self {
            Host::X86_64 => seccompiler::TargetArch::x86_64,
            Host::Aarch64 => seccompiler::TargetArch::aarch64,
            Host::Riscv64 => seccompiler::TargetArch::riscv64,
        }
    }

    /// The ABI `arch` names if a process on this host can make syscalls through it; `None` for
    /// architectures this host cannot execute at all, which a profile may list harmlessly
    /// (profiles such as Docker's are written for many hosts at once).
    pub(crate) fn abi_for(self, arch: Arch) -> Option<Abi> {
        match (self, arch) {
            (_, Arch::ScmpArchNative) => Some(self.native_abi()),
            (Host::X86_64, Arch::ScmpArchX86_64) => Some(Abi::X86_64),
            (Host::X86_64, Arch::ScmpArchX86) => Some(Abi::I386),
            (Host::X86_64, Arch::ScmpArchX32) => Some(Abi::X32),
            (Host::Aarch64, Arch::ScmpArchAarch64) => Some(Abi::Aarch64),
            (Host::Aarch64, Arch::ScmpArchArm) => Some(Abi::Arm),
            (Host::Riscv64, Arch::ScmpArchRiscv64) => Some(Abi::Riscv64),
            _ => None,
        }
    }

    /// The ABIs whose syscalls the filter lets through to the rules: always the native one, plus
    /// every listed one this host can execute. Sorted, without duplicates.
    pub(crate) fn filtered_abis(self, listed: &[Arch]) -> Vec<Abi> {
        let mut abis: Vec<Abi> =
            std::iter::once(self.native_abi()).chain(listed.iter().filter_map(|&arch| self.abi_for(arch))).collect();
        abis.sort_unstable();
        abis.dedup();
        abis
    }
}

/// Whether `name` is a syscall of any architecture the `syscalls` crate knows. A name that is
/// not is a typo or an invention, and rejecting it beats silently never matching it.
pub(crate) fn known_anywhere(name: &str) -> bool {
    macro_rules! in_any_table {
        ($($arch:ident),+) => {
            false $(|| syscalls::$arch::Sysno::from_str(name).is_ok())+
        };
    }
    in_any_table!(
        aarch64,
        arm,
        loongarch64,
        mips,
        mips64,
        powerpc,
        powerpc64,
        riscv32,
        riscv64,
        s390x,
        sparc,
        sparc64,
        x86,
        x86_64
    ) || arm_private_nr(name).is_some()
}

trait SyscallTable: FromStr {
    fn number(&self) -> i32;
}

macro_rules! impl_table {
    ($($arch:ident),+) => {
        $(impl SyscallTable for syscalls::$arch::Sysno {
            fn number(&self) -> i32 {
                self.id()
            }
        })+
    };
}
impl_table!(x86_64, x86, aarch64, arm, riscv64);

fn table_nr<T: SyscallTable>(name: &str) -> Option<u32> {
    let sysno = T::from_str(name).ok()?;
    u32::try_from(sysno.number()).ok()
}

/// ARM's private syscalls (`__ARM_NR_*` in arch/arm/include/uapi/asm/unistd.h, base 0x0f0000),
/// which the `syscalls` crate's arm table lacks but Docker's profile allows on arm.
const ARM_PRIVATE: &[(&str, u32)] = &[
    ("breakpoint", 0x000f_0001),
    ("cacheflush", 0x000f_0002),
    ("usr26", 0x000f_0003),
    ("usr32", 0x000f_0004),
    ("set_tls", 0x000f_0005),
    ("get_tls", 0x000f_0006),
];

fn arm_private_nr(name: &str) -> Option<u32> {
    ARM_PRIVATE.iter().find(|(n, _)| *n == name).map(|&(_, nr)| nr)
}

/// Entries of the kernel's syscall_64.tbl with ABI "64": x86_64-only, so their x86_64 numbers
/// are not valid x32 syscalls (several have an x32 variant in [`X32_COMPAT`] instead).
const X86_64_ONLY: &[&str] = &[
    "rt_sigaction",
    "rt_sigreturn",
    "ioctl",
    "readv",
    "writev",
    "recvfrom",
    "sendmsg",
    "recvmsg",
    "setsockopt",
    "getsockopt",
    "execve",
    "ptrace",
    "rt_sigpending",
    "rt_sigtimedwait",
    "rt_sigqueueinfo",
    "sigaltstack",
    "uselib",
    "_sysctl",
    "create_module",
    "get_kernel_syms",
    "query_module",
    "nfsservctl",
    "set_thread_area",
    "io_setup",
    "io_submit",
    "get_thread_area",
    "epoll_ctl_old",
    "epoll_wait_old",
    "timer_create",
    "vserver",
    "mq_notify",
    "kexec_load",
    "waitid",
    "set_robust_list",
    "get_robust_list",
    "vmsplice",
    "move_pages",
    "preadv",
    "pwritev",
    "rt_tgsigqueueinfo",
    "recvmmsg",
    "sendmmsg",
    "process_vm_readv",
    "process_vm_writev",
    "execveat",
    "preadv2",
    "pwritev2",
];

/// The x32-specific entries 512..=547 of syscall_64.tbl (ABI "x32"), in number order. The
/// `syscalls` crate has no x32 table, so these are kept here.
const X32_COMPAT: [&str; 36] = [
    "rt_sigaction",
    "rt_sigreturn",
    "ioctl",
    "readv",
    "writev",
    "recvfrom",
    "sendmsg",
    "recvmsg",
    "execve",
    "ptrace",
    "rt_sigpending",
    "rt_sigtimedwait",
    "rt_sigqueueinfo",
    "sigaltstack",
    "timer_create",
    "mq_notify",
    "kexec_load",
    "waitid",
    "set_robust_list",
    "get_robust_list",
    "vmsplice",
    "move_pages",
    "preadv",
    "pwritev",
    "rt_tgsigqueueinfo",
    "recvmmsg",
    "sendmmsg",
    "process_vm_readv",
    "process_vm_writev",
    "setsockopt",
    "getsockopt",
    "io_setup",
    "io_submit",
    "execveat",
    "preadv2",
    "pwritev2",
];
const X32_COMPAT_FIRST: u32 = 512;

/// x32 numbers: the x32 variant when there is one, else the shared ("common") x86_64 number;
/// always with the x32 bit set, as the kernel sees them in `seccomp_data.nr`.
fn x32_nr(name: &str) -> Option<u32> {
    let nr = match X32_COMPAT.iter().position(|n| *n == name) {
        Some(pos) => X32_COMPAT_FIRST + u32::try_from(pos).ok()?,
        None if X86_64_ONLY.contains(&name) => return None,
        None => table_nr::<syscalls::x86_64::Sysno>(name)?,
    };
    Some(nr | X32_SYSCALL_BIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_per_abi() {
        assert_eq!(Abi::X86_64.syscall_nr("read"), Some(0));
        assert_eq!(Abi::I386.syscall_nr("read"), Some(3));
        assert_eq!(Abi::X32.syscall_nr("read"), Some(X32_SYSCALL_BIT));
        assert_eq!(Abi::X32.syscall_nr("execve"), Some(520 | X32_SYSCALL_BIT));
        assert_eq!(Abi::X32.syscall_nr("pwritev2"), Some(547 | X32_SYSCALL_BIT));
        assert_eq!(Abi::X32.syscall_nr("uselib"), None);
        assert_eq!(Abi::X86_64.syscall_nr("_llseek"), None);
        assert_eq!(Abi::I386.syscall_nr("_llseek"), Some(140));
        assert_eq!(Abi::Aarch64.syscall_nr("openat"), Some(56));
        assert_eq!(Abi::Aarch64.syscall_nr("open"), None);
        assert_eq!(Abi::Arm.syscall_nr("set_tls"), Some(0x000f_0005));
        assert_eq!(Abi::Riscv64.syscall_nr("openat"), Some(56));
    }

    #[test]
    fn every_x86_64_only_name_exists_on_x86_64() {
        for name in X86_64_ONLY.iter().chain(X32_COMPAT.iter()) {
            assert!(Abi::X86_64.syscall_nr(name).is_some(), "{name}");
        }
    }

    #[test]
    fn names_known_somewhere() {
        assert!(known_anywhere("read"));
        assert!(known_anywhere("_llseek"));
        assert!(known_anywhere("breakpoint"));
        assert!(!known_anywhere("not_a_syscall"));
        assert!(!known_anywhere(""));
    }

    #[test]
    fn host_arch_mapping() {
        let abis = Host::X86_64.filtered_abis(&[Arch::ScmpArchX86, Arch::ScmpArchPpc64]);
        assert_eq!(abis, vec![Abi::X86_64, Abi::I386]);
        let abis = Host::Aarch64.filtered_abis(&[Arch::ScmpArchX86_64, Arch::ScmpArchArm]);
        assert_eq!(abis, vec![Abi::Aarch64, Abi::Arm]);
        assert_eq!(Host::Riscv64.filtered_abis(&[]), vec![Abi::Riscv64]);
        assert_eq!(Host::X86_64.filtered_abis(&[Arch::ScmpArchNative, Arch::ScmpArchX32]), vec![Abi::X86_64, Abi::X32]);
    }
}
