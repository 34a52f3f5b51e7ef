//! A classic-BPF interpreter for the instruction subset seccompiler and the dispatcher emit,
//! and the kernel's rule for combining several filters, so tests can check what compiled
//! programs decide without installing them.

use super::bpf::{
    BPF_ABS, BPF_ALU, BPF_AND, BPF_JA, BPF_JEQ, BPF_JGE, BPF_JGT, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_RET, BPF_W,
    Insn,
};

/// The syscall as a filter sees it (`struct seccomp_data`, without the instruction pointer).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Call {
    pub(crate) nr: u32,
    pub(crate) arch: u32,
    pub(crate) args: [u64; 6],
}

impl Call {
    pub(crate) fn new(arch: u32, nr: u32, args: &[u64]) -> Call {
        let mut all = [0; 6];
        all[..args.len()].copy_from_slice(args);
        Call { nr, arch, args: all }
    }

    /// The 32-bit word at `offset` of `struct seccomp_data` on a little-endian machine.
    fn word(&self, offset: u32) -> u32 {
        match offset {
            0 => self.nr,
            4 => self.arch,
            8 | 12 => 0, // instruction_pointer: no filter here reads it
            16..=63 if offset.is_multiple_of(4) => {
                let arg = self.args[((offset - 16) / 8) as usize];
                if offset.is_multiple_of(8) { (arg & 0xffff_ffff) as u32 } else { (arg >> 32) as u32 }
            }
            _ => panic!("load outside seccomp_data at offset {offset}"),
        }
    }
}

/// Runs one program on `call` and returns its `SECCOMP_RET_*` value.
pub(crate) fn run(program: &[Insn], call: &Call) -> u32 {
    let (mut pc, mut acc) = (0usize, 0u32);
    loop {
        let insn = program.get(pc).unwrap_or_else(|| panic!("ran off the end of the program at {pc}"));
        pc += 1;
        match insn.code {
            c if c == BPF_LD | BPF_W | BPF_ABS => acc = call.word(insn.k),
            c if c == BPF_ALU | BPF_AND | BPF_K => acc &= insn.k,
            c if c == BPF_RET | BPF_K => return insn.k,
            c if c == BPF_JMP | BPF_JA => pc += insn.k as usize,
            c => {
                let taken = match c {
                    c if c == BPF_JMP | BPF_JEQ | BPF_K => acc == insn.k,
                    c if c == BPF_JMP | BPF_JGT | BPF_K => acc > insn.k,
                    c if c == BPF_JMP | BPF_JGE | BPF_K => acc >= insn.k,
                    c if c == BPF_JMP | BPF_JSET | BPF_K => acc & insn.k != 0,
                    _ => panic!("unsupported BPF instruction {insn:?} at {}", pc - 1),
                };
                pc += usize::from(if taken { insn.jt } else { insn.jf });
            }
        }
    }
}

/// What the kernel decides when all `programs` are installed in order: every filter runs, the
/// action with the highest precedence wins, and among equal actions the most recently
/// installed filter's value (kernel/seccomp.c, `seccomp_run_filters`).
pub(crate) fn run_all(programs: &[Vec<Insn>], call: &Call) -> u32 {
    // ACTION_ONLY: the action bits compared as a signed number, so KILL_PROCESS (0x8000_0000)
    // ranks first and ALLOW (0x7fff_0000) last.
    let rank = |ret: u32| (ret & libc::SECCOMP_RET_ACTION_FULL) as i32;
    let mut result = libc::SECCOMP_RET_ALLOW;
    for program in programs.iter().rev() {
        let ret = run(program, call);
        if rank(ret) < rank(result) {
            result = ret;
        }
    }
    result
}
