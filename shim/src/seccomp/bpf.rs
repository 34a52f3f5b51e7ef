//! Classic-BPF plumbing around seccompiler's output: the opcodes we emit ourselves, removal of
//! seccompiler's arch-check prologue, a tiny label assembler for the arch dispatcher, and a
//! structural check of finished programs.

use seccompiler::sock_filter;

/// One classic-BPF instruction, laid out as the kernel's `struct sock_filter`.
pub(crate) type Insn = sock_filter;

// Opcode parts from <linux/bpf_common.h>.
pub(crate) const BPF_LD: u16 = 0x00;
pub(crate) const BPF_ALU: u16 = 0x04;
pub(crate) const BPF_JMP: u16 = 0x05;
pub(crate) const BPF_RET: u16 = 0x06;
pub(crate) const BPF_W: u16 = 0x00;
pub(crate) const BPF_ABS: u16 = 0x20;
pub(crate) const BPF_AND: u16 = 0x50;
pub(crate) const BPF_JA: u16 = 0x00;
pub(crate) const BPF_JEQ: u16 = 0x10;
pub(crate) const BPF_JGT: u16 = 0x20;
pub(crate) const BPF_JGE: u16 = 0x30;
pub(crate) const BPF_JSET: u16 = 0x40;
pub(crate) const BPF_K: u16 = 0x00;

/// The kernel rejects a classic-BPF program longer than this (`BPF_MAXINSNS`).
pub(crate) const BPF_MAXINSNS: usize = 4096;

/// The kernel caps the instructions of all filters a syscall runs through, counting a penalty
/// of 4 per filter (`MAX_INSNS_PER_PATH` in kernel/seccomp.c: 256 KiB / sizeof(sock_filter)).
pub(crate) const MAX_INSNS_PER_PATH: usize = (1 << 18) / 8;
pub(crate) const PER_FILTER_PENALTY: usize = 4;

/// Offsets into `struct seccomp_data { int nr; u32 arch; u64 ip; u64 args[6]; }`.
pub(crate) const DATA_NR: u32 = 0;
pub(crate) const DATA_ARCH: u32 = 4;

pub(crate) fn stmt(code: u16, k: u32) -> Insn {
    sock_filter { code, jt: 0, jf: 0, k }
}

pub(crate) fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Insn {
    sock_filter { code, jt, jf, k }
}

pub(crate) fn ret(k: u32) -> Insn {
    stmt(BPF_RET | BPF_K, k)
}

/// The single return value of a program that is just `ret k`.
pub(crate) fn constant_return(body: &[Insn]) -> Option<u32> {
    match body {
        [only] if only.code == BPF_RET | BPF_K => Some(only.k),
        _ => None,
    }
}

/// The three instructions seccompiler 0.5 puts in front of every program
/// (`build_arch_validation_sequence` in src/backend/bpf.rs): load `arch`, skip the kill when it
/// equals the target's audit value, kill the process.
fn seccompiler_prologue(audit_arch: u32) -> [Insn; 3] {
    [
        stmt(BPF_LD | BPF_W | BPF_ABS, DATA_ARCH),
        jump(BPF_JMP | BPF_JEQ | BPF_K, audit_arch, 1, 0),
        ret(libc::SECCOMP_RET_KILL_PROCESS),
    ]
}

/// Removes seccompiler's arch check so the body can sit behind our own multi-ABI dispatcher.
/// The body's jumps are relative and never leave it, so it can be moved anywhere. Returns
/// `None` if the prologue is not the expected one (a seccompiler change we must not paper over).
pub(crate) fn strip_prologue(mut program: Vec<Insn>, audit_arch: u32) -> Option<Vec<Insn>> {
    let prologue = seccompiler_prologue(audit_arch);
    if program.len() <= prologue.len() || program[..prologue.len()] != prologue {
        return None;
    }
    program.drain(..prologue.len());
    Some(program)
}

/// A jump target inside an [`Asm`] program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Label(usize);

enum Item {
    Insn(Insn),
    /// `BPF_JA` to a label; its 32-bit offset reaches any distance, unlike the 8-bit offsets of
    /// conditional jumps, so bodies of any size can follow the dispatcher.
    JumpTo(Label),
    Place(Label),
}

/// A forward-only assembler: instructions, labels, and long jumps resolved at the end.
#[derive(Default)]
pub(crate) struct Asm {
    items: Vec<Item>,
    labels: usize,
}

impl Asm {
    pub(crate) fn label(&mut self) -> Label {
        self.labels += 1;
        Label(self.labels - 1)
    }

    pub(crate) fn insn(&mut self, insn: Insn) {
        self.items.push(Item::Insn(insn));
    }

    pub(crate) fn extend(&mut self, insns: &[Insn]) {
        self.items.extend(insns.iter().cloned().map(Item::Insn));
    }

    pub(crate) fn jump_to(&mut self, label: Label) {
        self.items.push(Item::JumpTo(label));
    }

    pub(crate) fn place(&mut self, label: Label) {
        self.items.push(Item::Place(label));
    }

    /// Resolves the jumps. Panics on a backward jump or an unplaced label: both are bugs in
    /// this module, never in the profile.
    pub(crate) fn finish(self) -> Vec<Insn> {
        let mut positions = vec![None; self.labels];
        let mut pc = 0usize;
        for item in &self.items {
            match item {
                Item::Place(Label(l)) => positions[*l] = Some(pc),
                Item::Insn(_) | Item::JumpTo(_) => pc += 1,
            }
        }
        let mut out = Vec::with_capacity(pc);
        for item in self.items {
            match item {
                Item::Insn(insn) => out.push(insn),
                Item::JumpTo(Label(l)) => {
                    let target = positions[l].expect("jump to a label that was never placed");
                    let offset = target.checked_sub(out.len() + 1).expect("classic BPF jumps only forward");
                    let offset = u32::try_from(offset).expect("BPF program offset overflow");
                    out.push(stmt(BPF_JMP | BPF_JA, offset));
                }
                Item::Place(_) => {}
            }
        }
        out
    }
}

/// Checks what the kernel's verifier would: every instruction is one we know, every jump lands
/// inside the program, and the program cannot run off its end. Returns what is wrong.
pub(crate) fn check_program(program: &[Insn]) -> Result<(), String> {
    if program.is_empty() || program.len() > BPF_MAXINSNS {
        return Err(format!("program length {} is not in 1..={BPF_MAXINSNS}", program.len()));
    }
    for (pc, insn) in program.iter().enumerate() {
        let after = pc + 1;
        let within = |offset: usize| after + offset < program.len();
        let ok = match insn.code {
            c if c == BPF_LD | BPF_W | BPF_ABS => insn.k % 4 == 0 && insn.k < 64,
            c if c == BPF_ALU | BPF_AND | BPF_K => true,
            c if c == BPF_RET | BPF_K => true,
            c if c == BPF_JMP | BPF_JA => within(insn.k as usize),
            c if [BPF_JEQ, BPF_JGT, BPF_JGE, BPF_JSET].contains(&(c & !BPF_JMP)) && c & 0x07 == BPF_JMP => {
                within(insn.jt.into()) && within(insn.jf.into())
            }
            _ => false,
        };
        if !ok {
            return Err(format!("bad instruction {insn:?} at {pc}"));
        }
    }
    match program.last() {
        Some(last) if last.code == BPF_RET | BPF_K => Ok(()),
        _ => Err("program does not end with a return".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn strips_exactly_seccompiler_prologue() {
        let filter = seccompiler::SeccompFilter::new(
            BTreeMap::from([(1, vec![])]),
            seccompiler::SeccompAction::Errno(1),
            seccompiler::SeccompAction::Allow,
            seccompiler::TargetArch::x86_64,
        )
        .unwrap();
        let program: seccompiler::BpfProgram = filter.try_into().unwrap();
        let audit = crate::seccomp::arch::AUDIT_ARCH_X86_64;
        let body = strip_prologue(program.clone(), audit).unwrap();
        assert_eq!(body.len() + 3, program.len());
        assert_eq!(body[0], stmt(BPF_LD | BPF_W | BPF_ABS, DATA_NR));
        assert!(strip_prologue(program, crate::seccomp::arch::AUDIT_ARCH_AARCH64).is_none());
    }

    #[test]
    fn long_jumps_resolve_forward() {
        let mut asm = Asm::default();
        let far = asm.label();
        asm.jump_to(far);
        asm.extend(&vec![ret(0); 300]);
        asm.place(far);
        asm.insn(ret(1));
        let program = asm.finish();
        assert_eq!(program[0], stmt(BPF_JMP | BPF_JA, 300));
        assert_eq!(program.len(), 302);
        check_program(&program).unwrap();
    }

    #[test]
    fn check_rejects_bad_programs() {
        assert!(check_program(&[]).is_err());
        assert!(check_program(&[stmt(BPF_LD | BPF_W | BPF_ABS, 0)]).is_err());
        assert!(check_program(&[stmt(BPF_JMP | BPF_JA, 1), ret(0)]).is_err());
        assert!(check_program(&[jump(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 1), ret(0)]).is_err());
        assert!(check_program(&[jump(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 0), ret(0)]).is_ok());
    }
}
