//! Tests of compilation: errors, and the decisions of the compiled programs, evaluated with the
//! BPF interpreter in `interp.rs` under the kernel's rule for combining filters.

use oci_spec::runtime::LinuxSeccomp;
use serde_json::json;

use super::arch::{
    AUDIT_ARCH_AARCH64, AUDIT_ARCH_ARM, AUDIT_ARCH_I386, AUDIT_ARCH_RISCV64, AUDIT_ARCH_X86_64, Abi, Host,
    X32_SYSCALL_BIT,
};
use super::bpf::{self, BPF_MAXINSNS};
use super::compile::compile_for;
use super::interp::{Call, run, run_all};
use super::profiles::docker_default_for;
use super::{CompiledSeccomp, SeccompError};

const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const KILL_PROCESS: u32 = libc::SECCOMP_RET_KILL_PROCESS;
const KILL_THREAD: u32 = libc::SECCOMP_RET_KILL_THREAD;
const TRAP: u32 = libc::SECCOMP_RET_TRAP;
const LOG: u32 = libc::SECCOMP_RET_LOG;

fn errno(errno: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | errno.unsigned_abs()
}

fn trace(data: u32) -> u32 {
    libc::SECCOMP_RET_TRACE | data
}

fn profile(value: serde_json::Value) -> LinuxSeccomp {
    serde_json::from_value(value).expect("test profile must deserialize")
}

fn compile_x86(value: serde_json::Value) -> CompiledSeccomp {
    compile_for(&profile(value), Host::X86_64).expect("test profile must compile")
}

fn compile_err(value: serde_json::Value) -> SeccompError {
    compile_for(&profile(value), Host::X86_64).expect_err("test profile must be refused")
}

/// The decision for syscall `name` of `abi` with `args`.
fn decide(compiled: &CompiledSeccomp, abi: Abi, name: &str, args: &[u64]) -> u32 {
    let nr = abi.syscall_nr(name).unwrap_or_else(|| panic!("{name} has no number on {abi:?}"));
    run_all(compiled.programs(), &Call::new(abi.audit_arch(), nr, args))
}

fn decide_nr(compiled: &CompiledSeccomp, arch: u32, nr: u32) -> u32 {
    run_all(compiled.programs(), &Call::new(arch, nr, &[]))
}

// ---- errors ----

#[test]
fn notify_default_action_is_refused() {
    let err = compile_err(json!({"defaultAction": "SCMP_ACT_NOTIFY"}));
    assert!(matches!(err, SeccompError::NotifyUnsupported { .. }));
    let message = err.to_string();
    assert!(message.contains("SCMP_ACT_NOTIFY"), "{message}");
    assert!(message.contains("defaultAction"), "{message}");
}

#[test]
fn notify_rule_is_refused_naming_its_syscalls() {
    let err = compile_err(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["getpid", "getppid"], "action": "SCMP_ACT_NOTIFY"}]
    }));
    let message = err.to_string();
    assert!(message.contains("SCMP_ACT_NOTIFY"), "{message}");
    assert!(message.contains("\"getpid\""), "{message}");
}

#[test]
fn listener_path_is_refused() {
    let err = compile_err(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "listenerPath": "/run/agent.sock"
    }));
    assert!(err.to_string().contains("/run/agent.sock"), "{err}");
}

#[test]
fn unknown_syscall_is_refused_by_name() {
    let err = compile_err(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{"names": ["read", "not_a_syscall"], "action": "SCMP_ACT_ALLOW"}]
    }));
    assert!(err.to_string().starts_with("unknown syscall \"not_a_syscall\""), "{err}");
}

#[test]
fn unknown_syscall_is_refused_even_in_a_redundant_rule() {
    let err = compile_err(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["bogus_call"], "action": "SCMP_ACT_ALLOW"}]
    }));
    assert!(matches!(err, SeccompError::UnknownSyscall { name } if name == "bogus_call"));
}

#[test]
fn argument_index_above_five_is_refused() {
    let err = compile_err(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{
            "names": ["mmap"],
            "action": "SCMP_ACT_ERRNO",
            "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]
        }]
    }));
    let message = err.to_string();
    assert!(message.contains("\"mmap\""), "{message}");
    assert!(message.contains("index 6"), "{message}");
}

#[test]
fn wait_killable_recv_flag_is_refused() {
    let err = compile_err(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "flags": ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]
    }));
    assert!(err.to_string().contains("SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"), "{err}");
}

#[test]
fn unknown_flag_and_arch_names_are_refused_when_parsing() {
    // oci-spec's enums make these unrepresentable; the parse error names the culprit.
    let flag = serde_json::from_value::<LinuxSeccomp>(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "flags": ["SECCOMP_FILTER_FLAG_BOGUS"]
    }))
    .unwrap_err();
    assert!(flag.to_string().contains("SECCOMP_FILTER_FLAG_BOGUS"), "{flag}");
    let arch = serde_json::from_value::<LinuxSeccomp>(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_Z80"]
    }))
    .unwrap_err();
    assert!(arch.to_string().contains("SCMP_ARCH_Z80"), "{arch}");
}

#[test]
fn errno_beyond_sixteen_bits_is_refused() {
    let err = compile_err(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 70000}]
    }));
    let message = err.to_string();
    assert!(message.contains("70000") && message.contains("\"read\""), "{message}");
    let err = compile_err(json!({"defaultAction": "SCMP_ACT_TRACE", "defaultErrnoRet": 65536}));
    assert!(err.to_string().contains("defaultAction"), "{err}");
}

#[test]
fn filter_too_large_is_refused_naming_the_arch() {
    let syscalls: Vec<_> = (0..1200)
        .map(|value| {
            json!({
                "names": ["read"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": value, "op": "SCMP_CMP_EQ"}]
            })
        })
        .collect();
    let err = compile_err(json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": syscalls}));
    assert!(matches!(err, SeccompError::FilterTooLarge { arch: "SCMP_ARCH_X86_64", .. }), "{err}");
}

#[test]
fn unexecutable_architectures_are_ignored() {
    let compiled = compile_x86(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": ["SCMP_ARCH_PPC64", "SCMP_ARCH_S390X", "SCMP_ARCH_AARCH64"],
        "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ALLOW"}]
    }));
    assert_eq!(decide(&compiled, Abi::X86_64, "getpid", &[]), ALLOW);
    assert_eq!(decide_nr(&compiled, AUDIT_ARCH_AARCH64, 172), KILL_PROCESS);
}

// ---- actions and composition ----

#[test]
fn actions_map_to_kernel_return_values() {
    let compiled = compile_x86(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["getuid"], "action": "SCMP_ACT_KILL"},
            {"names": ["getgid"], "action": "SCMP_ACT_KILL_THREAD"},
            {"names": ["geteuid"], "action": "SCMP_ACT_KILL_PROCESS"},
            {"names": ["getegid"], "action": "SCMP_ACT_TRAP"},
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["getpgrp"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["gettid"], "action": "SCMP_ACT_TRACE"},
            {"names": ["getsid"], "action": "SCMP_ACT_TRACE", "errnoRet": 42},
            {"names": ["sync"], "action": "SCMP_ACT_LOG"},
            {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"}
        ]
    }));
    let expect = [
        ("getuid", KILL_THREAD),
        ("getgid", KILL_THREAD),
        ("geteuid", KILL_PROCESS),
        ("getegid", TRAP),
        ("getppid", errno(libc::EPERM)),
        ("getpgrp", errno(libc::EACCES)),
        ("gettid", trace(1)),
        ("getsid", trace(42)),
        ("sync", LOG),
        ("getpid", ALLOW),
        ("read", ALLOW),
    ];
    for (name, ret) in expect {
        assert_eq!(decide(&compiled, Abi::X86_64, name, &[]), ret, "{name}");
    }
}

#[test]
fn default_errno_is_eperm_unless_given() {
    let compiled = compile_x86(json!({"defaultAction": "SCMP_ACT_ERRNO"}));
    assert_eq!(decide(&compiled, Abi::X86_64, "read", &[]), errno(libc::EPERM));
    let compiled = compile_x86(json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38}));
    assert_eq!(decide(&compiled, Abi::X86_64, "read", &[]), errno(libc::ENOSYS));
}

#[test]
fn default_action_applies_to_unmatched_calls_for_every_default() {
    for (default, ret) in [
        ("SCMP_ACT_KILL_PROCESS", KILL_PROCESS),
        ("SCMP_ACT_KILL", KILL_THREAD),
        ("SCMP_ACT_TRAP", TRAP),
        ("SCMP_ACT_LOG", LOG),
        ("SCMP_ACT_TRACE", trace(1)),
    ] {
        let compiled = compile_x86(json!({
            "defaultAction": default,
            "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["write"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5}
            ]
        }));
        assert_eq!(decide(&compiled, Abi::X86_64, "close", &[]), ret, "{default}");
        assert_eq!(decide(&compiled, Abi::X86_64, "read", &[]), ALLOW, "{default}");
        assert_eq!(decide(&compiled, Abi::X86_64, "write", &[]), errno(5), "{default}");
    }
}

#[test]
fn conditional_rule_that_does_not_hold_falls_to_default() {
    let compiled = compile_x86(json!({
        "defaultAction": "SCMP_ACT_KILL_PROCESS",
        "syscalls": [
            {
                "names": ["write"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]
            },
            {
                "names": ["kill"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": 13,
                "args": [{"index": 1, "value": 9, "op": "SCMP_CMP_EQ"}]
            }
        ]
    }));
    assert_eq!(decide(&compiled, Abi::X86_64, "write", &[1, 0, 5]), ALLOW);
    assert_eq!(decide(&compiled, Abi::X86_64, "write", &[2, 0, 5]), KILL_PROCESS);
    assert_eq!(decide(&compiled, Abi::X86_64, "kill", &[7, 9]), errno(libc::EACCES));
    assert_eq!(decide(&compiled, Abi::X86_64, "kill", &[7, 15]), KILL_PROCESS);

    // The same with an ALLOW default: only the action filter decides.
    let compiled = compile_x86(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{
            "names": ["kill"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": 13,
            "args": [{"index": 1, "value": 9, "op": "SCMP_CMP_EQ"}]
        }]
    }));
    assert_eq!(decide(&compiled, Abi::X86_64, "kill", &[7, 9]), errno(libc::EACCES));
    assert_eq!(decide(&compiled, Abi::X86_64, "kill", &[7, 15]), ALLOW);
}

#[test]
fn overlapping_rules_take_the_strongest_action() {
    let compiled = compile_x86(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["ioctl"], "action": "SCMP_ACT_ERRNO"},
            {
                "names": ["ioctl"],
                "action": "SCMP_ACT_KILL_PROCESS",
                "args": [{"index": 1, "value": 0x5412, "op": "SCMP_CMP_EQ"}]
            }
        ]
    }));
    assert_eq!(decide(&compiled, Abi::X86_64, "ioctl", &[0, 1]), errno(libc::EPERM));
    assert_eq!(decide(&compiled, Abi::X86_64, "ioctl", &[0, 0x5412]), KILL_PROCESS);
}

#[test]
fn later_entry_wins_between_two_errnos() {
    let compiled = compile_x86(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["open"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
            {"names": ["open", "close"], "action": "SCMP_ACT_ERRNO", "errnoRet": 2}
        ]
    }));
    assert_eq!(decide(&compiled, Abi::X86_64, "open", &[]), errno(2));
    assert_eq!(decide(&compiled, Abi::X86_64, "close", &[]), errno(2));
}

#[test]
fn rules_with_the_default_action_are_skipped() {
    let compiled = compile_x86(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
            {"names": ["write"], "action": "SCMP_ACT_ALLOW"}
        ]
    }));
    assert_eq!(compiled.programs().len(), 1, "only the default filter is needed");
    assert_eq!(decide(&compiled, Abi::X86_64, "read", &[]), errno(libc::EPERM));
    assert_eq!(decide(&compiled, Abi::X86_64, "write", &[]), ALLOW);
}

#[test]
fn allow_default_without_rules_still_kills_other_abis() {
    let compiled = compile_x86(json!({"defaultAction": "SCMP_ACT_ALLOW"}));
    assert_eq!(compiled.programs().len(), 1);
    assert_eq!(decide(&compiled, Abi::X86_64, "read", &[]), ALLOW);
    assert_eq!(decide_nr(&compiled, AUDIT_ARCH_I386, 3), KILL_PROCESS);
    assert_eq!(decide_nr(&compiled, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT), KILL_PROCESS);
}

#[test]
fn flags_become_seccomp_filter_flags() {
    let compiled = compile_x86(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "flags": [
            "SECCOMP_FILTER_FLAG_TSYNC",
            "SECCOMP_FILTER_FLAG_LOG",
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW"
        ]
    }));
    assert_eq!(
        compiled.flags(),
        libc::SECCOMP_FILTER_FLAG_TSYNC | libc::SECCOMP_FILTER_FLAG_LOG | libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
    );
}

// ---- conditions ----

#[test]
fn comparisons_use_the_full_64_bit_argument() {
    let values: [u64; 9] = [
        0,
        1,
        0xffff_ffff,
        0x1_0000_0000,
        0x1_0000_0001,
        0x2_0000_0000,
        0xffff_ffff_0000_0000,
        0x8000_0000_0000_0001,
        u64::MAX,
    ];
    type Predicate = fn(u64, u64, u64) -> bool;
    let ops: [(&str, Predicate); 7] = [
        ("SCMP_CMP_NE", |a, v, _| a != v),
        ("SCMP_CMP_LT", |a, v, _| a < v),
        ("SCMP_CMP_LE", |a, v, _| a <= v),
        ("SCMP_CMP_EQ", |a, v, _| a == v),
        ("SCMP_CMP_GE", |a, v, _| a >= v),
        ("SCMP_CMP_GT", |a, v, _| a > v),
        ("SCMP_CMP_MASKED_EQ", |a, mask, datum| a & mask == datum),
    ];
    for (op, holds) in ops {
        for &value in &values {
            let datum = value & 0xffff_0000_ffff_0001;
            let compiled = compile_x86(json!({
                "defaultAction": "SCMP_ACT_ERRNO",
                "syscalls": [{
                    "names": ["lseek"],
                    "action": "SCMP_ACT_ALLOW",
                    "args": [{"index": 2, "value": value, "valueTwo": datum, "op": op}]
                }]
            }));
            for &arg in &values {
                let expected = if holds(arg, value, datum) { ALLOW } else { errno(1) };
                let got = decide(&compiled, Abi::X86_64, "lseek", &[0, 0, arg]);
                assert_eq!(got, expected, "{op} value {value:#x} datum {datum:#x} arg {arg:#x}");
            }
        }
    }
}

#[test]
fn masked_eq_datum_outside_the_mask_never_matches() {
    let compiled = compile_x86(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{
            "names": ["lseek"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": 0xf0, "valueTwo": 0x1f0, "op": "SCMP_CMP_MASKED_EQ"}]
        }]
    }));
    for arg in [0xf0, 0x1f0, 0] {
        assert_eq!(decide(&compiled, Abi::X86_64, "lseek", &[arg]), errno(1));
    }
}

#[test]
fn conditions_on_different_arguments_are_anded() {
    let compiled = compile_x86(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{
            "names": ["fcntl"],
            "action": "SCMP_ACT_ALLOW",
            "args": [
                {"index": 0, "value": 3, "op": "SCMP_CMP_EQ"},
                {"index": 1, "value": 1, "op": "SCMP_CMP_EQ"}
            ]
        }]
    }));
    assert_eq!(decide(&compiled, Abi::X86_64, "fcntl", &[3, 1]), ALLOW);
    assert_eq!(decide(&compiled, Abi::X86_64, "fcntl", &[3, 2]), errno(1));
    assert_eq!(decide(&compiled, Abi::X86_64, "fcntl", &[4, 1]), errno(1));
}

#[test]
fn repeated_argument_makes_each_condition_a_rule_like_runc() {
    let compiled = compile_x86(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{
            "names": ["fcntl"],
            "action": "SCMP_ACT_ALLOW",
            "args": [
                {"index": 1, "value": 1, "op": "SCMP_CMP_EQ"},
                {"index": 1, "value": 2, "op": "SCMP_CMP_EQ"},
                {"index": 2, "value": 7, "op": "SCMP_CMP_EQ"}
            ]
        }]
    }));
    assert_eq!(decide(&compiled, Abi::X86_64, "fcntl", &[0, 1, 0]), ALLOW);
    assert_eq!(decide(&compiled, Abi::X86_64, "fcntl", &[0, 2, 0]), ALLOW);
    // runc ORs all of the entry's conditions once one argument repeats.
    assert_eq!(decide(&compiled, Abi::X86_64, "fcntl", &[0, 3, 7]), ALLOW);
    assert_eq!(decide(&compiled, Abi::X86_64, "fcntl", &[0, 3, 0]), errno(1));
}

#[test]
fn unconditional_rule_overrides_conditional_ones() {
    let compiled = compile_x86(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {
                "names": ["fcntl"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 1, "value": 1, "op": "SCMP_CMP_EQ"}]
            },
            {"names": ["fcntl"], "action": "SCMP_ACT_ALLOW"}
        ]
    }));
    assert_eq!(decide(&compiled, Abi::X86_64, "fcntl", &[0, 9]), ALLOW);
}

// ---- architectures ----

#[test]
fn each_abi_is_filtered_with_its_own_numbers() {
    let compiled = compile_x86(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": ["_llseek", "execve", "getpid"], "action": "SCMP_ACT_ALLOW"}]
    }));
    // getpid is 39 on x86_64 and 20 on i386; 20 is writev on x86_64.
    assert_eq!(decide_nr(&compiled, AUDIT_ARCH_X86_64, 39), ALLOW);
    assert_eq!(decide_nr(&compiled, AUDIT_ARCH_X86_64, 20), errno(1));
    assert_eq!(decide_nr(&compiled, AUDIT_ARCH_I386, 20), ALLOW);
    assert_eq!(decide_nr(&compiled, AUDIT_ARCH_I386, 39), errno(1));
    // _llseek exists on i386 only.
    assert_eq!(decide_nr(&compiled, AUDIT_ARCH_I386, 140), ALLOW);
    assert_eq!(decide_nr(&compiled, AUDIT_ARCH_X86_64, 140), errno(1));
    // x32 execve is 520; x86_64's number 59 is not an x32 syscall.
    assert_eq!(decide_nr(&compiled, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 520), ALLOW);
    assert_eq!(decide_nr(&compiled, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 59), errno(1));
    assert_eq!(decide_nr(&compiled, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 39), ALLOW);
    assert_eq!(decide_nr(&compiled, AUDIT_ARCH_X86_64, 520), errno(1));
}

#[test]
fn unlisted_abis_are_killed() {
    let compiled = compile_x86(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["reboot"], "action": "SCMP_ACT_ERRNO"}]
    }));
    assert_eq!(decide_nr(&compiled, AUDIT_ARCH_X86_64, 39), ALLOW);
    assert_eq!(decide_nr(&compiled, AUDIT_ARCH_I386, 20), KILL_PROCESS);
    assert_eq!(decide_nr(&compiled, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 39), KILL_PROCESS);
    assert_eq!(decide_nr(&compiled, AUDIT_ARCH_ARM, 20), KILL_PROCESS);
    assert_eq!(decide_nr(&compiled, AUDIT_ARCH_AARCH64, 172), KILL_PROCESS);
}

#[test]
fn native_arch_is_filtered_even_when_unlisted() {
    let compiled = compile_x86(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": ["SCMP_ARCH_X86"],
        "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ALLOW"}]
    }));
    assert_eq!(decide_nr(&compiled, AUDIT_ARCH_X86_64, 39), ALLOW);
    assert_eq!(decide_nr(&compiled, AUDIT_ARCH_I386, 20), ALLOW);
    assert_eq!(decide_nr(&compiled, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 39), KILL_PROCESS);
}

#[test]
fn aarch64_host_filters_arm_compat_calls() {
    let spec = profile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM", "SCMP_ARCH_X86"],
        "syscalls": [{"names": ["getpid", "set_tls"], "action": "SCMP_ACT_ALLOW"}]
    }));
    let compiled = compile_for(&spec, Host::Aarch64).unwrap();
    assert_eq!(decide_nr(&compiled, AUDIT_ARCH_AARCH64, 172), ALLOW);
    assert_eq!(decide_nr(&compiled, AUDIT_ARCH_AARCH64, 20), errno(1));
    assert_eq!(decide_nr(&compiled, AUDIT_ARCH_ARM, 20), ALLOW);
    assert_eq!(decide_nr(&compiled, AUDIT_ARCH_ARM, 0x000f_0005), ALLOW);
    assert_eq!(decide_nr(&compiled, AUDIT_ARCH_X86_64, 39), KILL_PROCESS);
    assert_eq!(decide_nr(&compiled, AUDIT_ARCH_I386, 20), KILL_PROCESS);
}

#[test]
fn riscv64_host_filters_native_calls_only() {
    let spec = profile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ALLOW"}]
    }));
    let compiled = compile_for(&spec, Host::Riscv64).unwrap();
    assert_eq!(decide_nr(&compiled, AUDIT_ARCH_RISCV64, 172), ALLOW);
    assert_eq!(decide_nr(&compiled, AUDIT_ARCH_RISCV64, 173), errno(1));
    assert_eq!(decide_nr(&compiled, AUDIT_ARCH_X86_64, 39), KILL_PROCESS);
}

// ---- Docker's default profile ----

const CLONE_NEWNS: u64 = 0x0002_0000;
const CLONE_NEWUSER: u64 = 0x1000_0000;
const THREAD_FLAGS: u64 = 0x003d_0f00; // what glibc's pthread_create passes
const SIGCHLD: u64 = 17;

fn docker(host: Host) -> CompiledSeccomp {
    compile_for(&docker_default_for(Some(host)), host).expect("Docker's profile must compile")
}

#[test]
fn docker_default_allows_ordinary_programs() {
    let compiled = docker(Host::X86_64);
    for name in [
        "read",
        "write",
        "openat",
        "close",
        "mmap",
        "execve",
        "exit_group",
        "futex",
        "getpid",
        "arch_prctl",
        "chroot",
        "ptrace",
        "rt_sigreturn",
        "wait4",
        "statx",
    ] {
        assert_eq!(decide(&compiled, Abi::X86_64, name, &[]), ALLOW, "{name}");
    }
}

#[test]
fn docker_default_refuses_privileged_calls_with_eperm() {
    let compiled = docker(Host::X86_64);
    for name in [
        "unshare",
        "mount",
        "umount2",
        "setns",
        "keyctl",
        "add_key",
        "request_key",
        "bpf",
        "reboot",
        "init_module",
        "pivot_root",
        "swapon",
        "open_by_handle_at",
        "kexec_load",
        "perf_event_open",
        "fsopen",
        "move_mount",
        "iopl",
        "settimeofday",
    ] {
        assert_eq!(decide(&compiled, Abi::X86_64, name, &[]), errno(libc::EPERM), "{name}");
    }
}

#[test]
fn docker_default_restricts_clone_and_clone3() {
    let compiled = docker(Host::X86_64);
    assert_eq!(decide(&compiled, Abi::X86_64, "clone3", &[]), errno(libc::ENOSYS));
    assert_eq!(decide(&compiled, Abi::X86_64, "clone", &[SIGCHLD]), ALLOW);
    assert_eq!(decide(&compiled, Abi::X86_64, "clone", &[THREAD_FLAGS]), ALLOW);
    for flags in [CLONE_NEWUSER, CLONE_NEWNS | SIGCHLD, 0x4000_0000, 0x1_0000_0000 | CLONE_NEWUSER] {
        assert_eq!(decide(&compiled, Abi::X86_64, "clone", &[flags]), errno(libc::EPERM), "{flags:#x}");
    }
}

#[test]
fn docker_default_restricts_socket_and_personality() {
    let compiled = docker(Host::X86_64);
    for family in [1, 2, 10, 16, 37, 39, 41, 45] {
        assert_eq!(decide(&compiled, Abi::X86_64, "socket", &[family]), ALLOW, "{family}");
    }
    for family in [38, 40] {
        assert_eq!(decide(&compiled, Abi::X86_64, "socket", &[family]), errno(libc::EPERM), "AF {family}");
    }
    for persona in [0, 8, 0x20000, 0x20008, 0xffff_ffff] {
        assert_eq!(decide(&compiled, Abi::X86_64, "personality", &[persona]), ALLOW);
    }
    assert_eq!(decide(&compiled, Abi::X86_64, "personality", &[0x0040_0000]), errno(libc::EPERM));
}

#[test]
fn docker_default_filters_i386_and_x32_with_their_numbers() {
    let compiled = docker(Host::X86_64);
    for name in ["read", "_llseek", "socketcall", "mmap2", "execve", "set_thread_area"] {
        assert_eq!(decide(&compiled, Abi::I386, name, &[]), ALLOW, "i386 {name}");
    }
    for name in ["unshare", "mount", "keyctl"] {
        assert_eq!(decide(&compiled, Abi::I386, name, &[]), errno(libc::EPERM), "i386 {name}");
    }
    assert_eq!(decide(&compiled, Abi::I386, "clone3", &[]), errno(libc::ENOSYS));
    for name in ["read", "execve", "ioctl", "getpid"] {
        assert_eq!(decide(&compiled, Abi::X32, name, &[]), ALLOW, "x32 {name}");
    }
    assert_eq!(decide(&compiled, Abi::X32, "unshare", &[]), errno(libc::EPERM));
    assert_eq!(decide(&compiled, Abi::X32, "clone3", &[]), errno(libc::ENOSYS));
    assert_eq!(
        decide_nr(&compiled, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 59),
        errno(libc::EPERM),
        "x86_64's execve number is not an x32 syscall"
    );
    assert_eq!(decide_nr(&compiled, AUDIT_ARCH_ARM, 3), KILL_PROCESS);
}

#[test]
fn docker_default_on_aarch64_allows_arm_private_calls() {
    let compiled = docker(Host::Aarch64);
    assert_eq!(decide(&compiled, Abi::Aarch64, "openat", &[]), ALLOW);
    assert_eq!(decide(&compiled, Abi::Aarch64, "unshare", &[]), errno(libc::EPERM));
    assert_eq!(decide(&compiled, Abi::Aarch64, "clone", &[CLONE_NEWUSER]), errno(1));
    assert_eq!(decide(&compiled, Abi::Arm, "set_tls", &[]), ALLOW);
    assert_eq!(decide(&compiled, Abi::Arm, "cacheflush", &[]), ALLOW);
    assert_eq!(decide(&compiled, Abi::Arm, "mount", &[]), errno(libc::EPERM));
    assert_eq!(decide_nr(&compiled, AUDIT_ARCH_X86_64, 39), KILL_PROCESS);
}

#[test]
fn docker_default_programs_respect_kernel_limits() {
    for host in [Host::X86_64, Host::Aarch64, Host::Riscv64] {
        let compiled = docker(host);
        for program in compiled.programs() {
            assert!(program.len() <= BPF_MAXINSNS);
            bpf::check_program(program).unwrap();
        }
        // The x86_64 bodies need a long jump past 255 instructions; make sure they exist.
        if host == Host::X86_64 {
            assert!(compiled.programs().iter().any(|p| p.len() > 1000));
        }
    }
}

#[test]
fn docker_default_is_for_the_host_architectures() {
    let spec = docker_default_for(Some(Host::X86_64));
    assert_eq!(spec.architectures().as_ref().map(Vec::len), Some(3));
    assert_eq!(spec.default_errno_ret(), Some(1));
}

#[test]
fn total_instruction_budget_is_enforced() {
    let programs = vec![vec![bpf::ret(ALLOW); BPF_MAXINSNS]; 8];
    let err = super::compile::check_programs(&programs).unwrap_err();
    assert!(matches!(err, SeccompError::TooManyInstructions { .. }), "{err}");
}

#[test]
fn every_program_rejects_garbage_arch_values() {
    let compiled = docker(Host::X86_64);
    for program in compiled.programs() {
        assert_eq!(run(program, &Call::new(0xdead_beef, 0, &[])), KILL_PROCESS);
    }
}

// ---- the real kernel (needs root-free seccomp, but forks; run with --ignored) ----

/// Runs `child` in a forked process and returns its wait status. The child must only make
/// async-signal-safe calls: the test harness is multi-threaded.
fn in_child(child: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child only runs `child`, which makes raw syscalls and no allocation, then
    // leaves with _exit; the parent only waits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = child();
        // SAFETY: _exit ends the forked child without running the parent's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid out-pointer.
    let waited = unsafe { libc::waitpid(pid, &raw mut status, 0) };
    assert_eq!(waited, pid);
    status
}

fn set_no_new_privs() -> bool {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 }
}

fn errno_now() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[test]
#[ignore = "forks and installs a real seccomp filter"]
fn docker_default_in_the_kernel() {
    let compiled = super::compile(&super::profiles::docker_default()).unwrap();
    let status = in_child(|| {
        if !set_no_new_privs() {
            return 10;
        }
        if compiled.install().is_err() {
            return 11;
        }
        // SAFETY: unshare takes flags only.
        if unsafe { libc::unshare(libc::CLONE_NEWNS) } != -1 || errno_now() != libc::EPERM {
            return 12;
        }
        // SAFETY: getpid has no arguments.
        if unsafe { libc::getpid() } <= 0 {
            return 13;
        }
        // SAFETY: clone3 with a null argument: seccomp answers before the kernel reads it.
        let rc = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0) };
        if rc != -1 || errno_now() != libc::ENOSYS {
            return 14;
        }
        // SAFETY: socket takes integers only; AF_VSOCK is refused by the profile.
        if unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0) } != -1 || errno_now() != libc::EPERM {
            return 15;
        }
        // SAFETY: a zero-length write of a valid (empty) buffer to stdout.
        if unsafe { libc::write(1, [0u8; 0].as_ptr().cast(), 0) } != 0 {
            return 16;
        }
        0
    });
    assert!(libc::WIFEXITED(status), "child died: status {status:#x}");
    assert_eq!(libc::WEXITSTATUS(status), 0, "step that failed (see test)");
}

#[cfg(target_arch = "x86_64")]
#[test]
#[ignore = "forks and installs a real seccomp filter"]
fn unlisted_x32_abi_is_killed_by_the_kernel() {
    let spec = profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]
    }));
    let compiled = super::compile(&spec).unwrap();
    let status = in_child(|| {
        if !set_no_new_privs() || compiled.install().is_err() {
            return 10;
        }
        // SAFETY: getppid takes no arguments. (glibc's getppid() wrapper assumes it cannot fail
        // and would not set errno, hence the raw syscall.)
        if unsafe { libc::syscall(libc::SYS_getppid) } != -1 || errno_now() != libc::EACCES {
            return 11;
        }
        // SAFETY: the x32 getpid takes no arguments; the filter kills us before it runs.
        unsafe { libc::syscall(libc::c_long::from(X32_SYSCALL_BIT) | libc::SYS_getpid) };
        12
    });
    assert!(libc::WIFSIGNALED(status), "child was not killed: status {status:#x}");
    assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
}

#[cfg(target_arch = "x86_64")]
#[test]
#[ignore = "forks and installs a real seccomp filter"]
fn i386_calls_are_filtered_with_i386_numbers_by_the_kernel() {
    fn int80_getpid() -> i64 {
        let mut ret: i64 = 20; // getpid on i386
        // SAFETY: int 0x80 enters the i386 syscall path; getpid reads no memory, and the
        // registers the compat entry may clobber (r8-r11) are declared.
        unsafe {
            std::arch::asm!(
                "int 0x80",
                inlateout("rax") ret,
                out("r8") _, out("r9") _, out("r10") _, out("r11") _,
            );
        }
        ret
    }
    let spec = profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
        "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]
    }));
    let compiled = super::compile(&spec).unwrap();
    let status = in_child(|| {
        if !set_no_new_privs() || compiled.install().is_err() {
            return 10;
        }
        if int80_getpid() != -i64::from(libc::EACCES) {
            return 11;
        }
        0
    });
    assert!(libc::WIFEXITED(status), "child died: status {status:#x}");
    assert_eq!(libc::WEXITSTATUS(status), 0);
}
