//! Translation of an OCI `linux.seccomp` section into seccomp BPF programs.
//!
//! seccompiler builds a filter with one action for matching calls and one for the rest, so a
//! profile with several actions becomes several filters, and the kernel combines them: every
//! installed filter runs on every syscall and the result with the highest precedence wins
//! (KILL_PROCESS > KILL_THREAD > TRAP > ERRNO > USER_NOTIF > TRACE > LOG > ALLOW; between equal
//! actions the most recently installed filter's data wins). The filters are:
//!
//! * the *default* filter, present unless `defaultAction` is ALLOW: a call matched by any rule
//!   gets ALLOW, every other call `defaultAction`;
//! * one *action* filter per distinct action (with its errno/trace data) among the non-ALLOW
//!   rules: a call matched by one of its rules gets that action, every other call ALLOW.
//!
//! A call matched by no rule gets `defaultAction` from the default filter and ALLOW from the
//! rest, so `defaultAction`. A call matched by a rule gets ALLOW from the default filter and the
//! rule's action from its action filter, so the rule's action. A rule whose conditions do not
//! hold matches nothing, so the call falls to `defaultAction`. When rules with different actions
//! match the same call, the strongest action wins; between two errnos (or two trace values) the
//! later entry in the profile wins, since action filters are installed in profile order.
//!
//! Each filter is one BPF program (or one per ABI when it would not fit the kernel's 4096
//! instructions): a dispatcher on `seccomp_data.arch` (and the x32 bit of `nr`) jumps to a body
//! per ABI, built by seccompiler from that ABI's syscall numbers. Calls of an ABI the profile
//! does not list are killed, as libseccomp's bad-arch action does.

use std::collections::BTreeMap;

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall,
};
use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

use super::arch::{Abi, Host, X32_SYSCALL_BIT, known_anywhere};
use super::bpf::{
    self, Asm, BPF_ABS, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_MAXINSNS, BPF_W, DATA_ARCH, DATA_NR, Insn,
    MAX_INSNS_PER_PATH, PER_FILTER_PENALTY,
};
use super::{CompiledSeccomp, SeccompError};

/// A syscall has at most six arguments.
const ARG_COUNT: usize = 6;

/// The errno of `SCMP_ACT_ERRNO` (and the data of `SCMP_ACT_TRACE`) when the profile gives
/// none, as runc does.
const DEFAULT_RET_DATA: u32 = libc::EPERM as u32;

/// A seccomp action with its data, as the kernel will see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    KillProcess,
    KillThread,
    Trap,
    Errno(u16),
    Trace(u16),
    Log,
    Allow,
}

impl Action {
    /// `context` names where the action came from, for error messages.
    fn from_spec(
        action: LinuxSeccompAction,
        data: Option<u32>,
        context: impl Fn() -> String,
    ) -> Result<Self, SeccompError> {
        let data16 = |name: &'static str| {
            let value = data.unwrap_or(DEFAULT_RET_DATA);
            u16::try_from(value).map_err(|_| SeccompError::ReturnDataOutOfRange {
                context: context(),
                action: name,
                value,
            })
        };
        Ok(match action {
            // libseccomp's SCMP_ACT_KILL has always meant "kill the thread".
            LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => Action::KillThread,
            LinuxSeccompAction::ScmpActKillProcess => Action::KillProcess,
            LinuxSeccompAction::ScmpActTrap => Action::Trap,
            LinuxSeccompAction::ScmpActErrno => Action::Errno(data16("SCMP_ACT_ERRNO")?),
            LinuxSeccompAction::ScmpActTrace => Action::Trace(data16("SCMP_ACT_TRACE")?),
            LinuxSeccompAction::ScmpActLog => Action::Log,
            LinuxSeccompAction::ScmpActAllow => Action::Allow,
            LinuxSeccompAction::ScmpActNotify => {
                return Err(SeccompError::NotifyUnsupported { context: context() });
            }
        })
    }

    fn to_seccompiler(self) -> SeccompAction {
        match self {
            Action::KillProcess => SeccompAction::KillProcess,
            Action::KillThread => SeccompAction::KillThread,
            Action::Trap => SeccompAction::Trap,
            Action::Errno(errno) => SeccompAction::Errno(errno.into()),
            Action::Trace(data) => SeccompAction::Trace(data.into()),
            Action::Log => SeccompAction::Log,
            Action::Allow => SeccompAction::Allow,
        }
    }

    /// The `SECCOMP_RET_*` value a filter returns for this action.
    pub(crate) fn ret_value(self) -> u32 {
        self.to_seccompiler().into()
    }
}

/// One syscall name with one set of ANDed conditions (none: unconditional).
struct Rule<'a> {
    name: &'a str,
    action: Action,
    conditions: Vec<SeccompCondition>,
}

/// One filter to build: calls matching `rules` get `on_match`, the others `on_mismatch`.
struct Plan<'a> {
    on_match: Action,
    on_mismatch: Action,
    rules: Vec<&'a Rule<'a>>,
}

/// Compiles `spec` for `host`. Split from [`super::compile()`] so tests can compile for every
/// supported host on any machine.
pub(crate) fn compile_for(spec: &LinuxSeccomp, host: Host) -> Result<CompiledSeccomp, SeccompError> {
    if let Some(path) = spec.listener_path() {
        return Err(SeccompError::ListenerUnsupported { path: path.clone() });
    }
    let flags = filter_flags(spec.flags().as_deref().unwrap_or_default())?;
    let default = Action::from_spec(spec.default_action(), spec.default_errno_ret(), || "defaultAction".to_owned())?;
    let rules = collect_rules(spec.syscalls().as_deref().unwrap_or_default(), default)?;
    let abis = host.filtered_abis(spec.architectures().as_deref().unwrap_or_default());

    let mut programs = Vec::new();
    for plan in plan_filters(default, &rules) {
        programs.extend(build_programs(host, &abis, &plan)?);
    }
    if programs.is_empty() {
        // Nothing to refuse among the listed ABIs, but calls of other ABIs must still die.
        let allow = [bpf::ret(Action::Allow.ret_value())];
        let routes: Vec<(Abi, &[Insn])> = abis.iter().map(|&abi| (abi, &allow[..])).collect();
        programs.push(layout(host, &routes));
    }
    check_programs(&programs)?;
    Ok(CompiledSeccomp { programs, flags })
}

fn filter_flags(flags: &[LinuxSeccompFilterFlag]) -> Result<libc::c_ulong, SeccompError> {
    flags.iter().try_fold(0, |bits, flag| {
        let bit = match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW,
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                return Err(SeccompError::UnsupportedFlag {
                    flag: "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
                    reason: "it only affects SCMP_ACT_NOTIFY listeners, which Tote does not \
                             support",
                });
            }
        };
        Ok(bits | bit)
    })
}

/// Expands the profile's entries into rules, validating every entry (even one that turns out
/// redundant) so that a bad profile is refused whole.
fn collect_rules(entries: &[LinuxSyscall], default: Action) -> Result<Vec<Rule<'_>>, SeccompError> {
    let mut rules = Vec::new();
    for entry in entries {
        let describe = || describe_names(entry.names());
        let action = Action::from_spec(entry.action(), entry.errno_ret(), describe)?;
        if let Some(name) = entry.names().iter().find(|name| !known_anywhere(name)) {
            return Err(SeccompError::UnknownSyscall { name: name.clone() });
        }
        let condition_sets = condition_sets(entry.args().as_deref().unwrap_or_default(), describe)?;
        // Like runc: a rule that asks for the default action changes nothing.
        if action == default {
            continue;
        }
        for name in entry.names() {
            for conditions in &condition_sets {
                rules.push(Rule { name, action, conditions: conditions.clone() });
            }
        }
    }
    Ok(rules)
}

/// The alternative condition sets of one entry (a call matches if any set holds). Like runc:
/// conditions on distinct arguments are ANDed into one rule, but when two conditions test the
/// same argument, every condition of the entry becomes a rule of its own.
fn condition_sets(
    args: &[LinuxSeccompArg],
    describe: impl Fn() -> String,
) -> Result<Vec<Vec<SeccompCondition>>, SeccompError> {
    if args.is_empty() {
        return Ok(vec![Vec::new()]);
    }
    let mut per_index = [0usize; ARG_COUNT];
    let mut conditions = Vec::with_capacity(args.len());
    for arg in args {
        let count = per_index
            .get_mut(arg.index())
            .ok_or_else(|| SeccompError::ArgIndexOutOfRange { syscalls: describe(), index: arg.index() })?;
        *count += 1;
        conditions.push(condition(arg)?);
    }
    let sets: Vec<Vec<Option<SeccompCondition>>> = if per_index.iter().any(|&n| n > 1) {
        conditions.into_iter().map(|c| vec![c]).collect()
    } else {
        vec![conditions]
    };
    // A set holding a condition that can never be true never matches: leave it out.
    Ok(sets.into_iter().filter_map(|set| set.into_iter().collect::<Option<Vec<_>>>()).collect())
}

/// One OCI condition as a seccompiler condition over the full 64-bit argument (as libseccomp
/// compares). `None` for a condition that can never hold.
fn condition(arg: &LinuxSeccompArg) -> Result<Option<SeccompCondition>, SeccompError> {
    let (op, value) = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, arg.value()),
        LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, arg.value()),
        LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, arg.value()),
        LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, arg.value()),
        LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, arg.value()),
        LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, arg.value()),
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            // `value` is the mask, `valueTwo` the datum: (arg & mask) == datum. seccompiler
            // masks the datum too, so a datum with bits outside the mask would match where
            // libseccomp never does; keep libseccomp's meaning.
            let (mask, datum) = (arg.value(), arg.value_two().unwrap_or(0));
            if datum & !mask != 0 {
                return Ok(None);
            }
            (SeccompCmpOp::MaskedEq(mask), datum)
        }
    };
    let index = u8::try_from(arg.index()).expect("argument index checked against ARG_COUNT");
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
        .map(Some)
        .map_err(|source| SeccompError::Backend { arch: "any architecture", source })
}

/// The filters to install, in order (see the module documentation).
fn plan_filters<'a>(default: Action, rules: &'a [Rule<'a>]) -> Vec<Plan<'a>> {
    let mut plans = Vec::new();
    if default != Action::Allow {
        plans.push(Plan { on_match: Action::Allow, on_mismatch: default, rules: rules.iter().collect() });
    }
    let mut actions: Vec<Action> = Vec::new();
    for rule in rules {
        if rule.action != Action::Allow && !actions.contains(&rule.action) {
            actions.push(rule.action);
        }
    }
    plans.extend(actions.into_iter().map(|action| Plan {
        on_match: action,
        on_mismatch: Action::Allow,
        rules: rules.iter().filter(|rule| rule.action == action).collect(),
    }));
    plans
}

/// The programs of one filter: one if it fits the kernel's limit, else one per ABI with rules.
/// In a per-ABI program the other ABIs' bodies are replaced by ALLOW, which loses to any other
/// result, so together the programs still give each call exactly its own ABI's answer.
fn build_programs(host: Host, abis: &[Abi], plan: &Plan<'_>) -> Result<Vec<Vec<Insn>>, SeccompError> {
    let allow = Action::Allow.ret_value();
    let bodies = abis.iter().map(|&abi| Ok((abi, body(host, abi, plan)?))).collect::<Result<Vec<_>, SeccompError>>()?;
    if bodies.iter().all(|(_, body)| bpf::constant_return(body) == Some(allow)) {
        // Allows everything the profile's ABIs do; other ABIs are killed by the other filters.
        return Ok(Vec::new());
    }
    let routes: Vec<(Abi, &[Insn])> = bodies.iter().map(|(abi, b)| (*abi, &b[..])).collect();
    let whole = layout(host, &routes);
    if whole.len() <= BPF_MAXINSNS {
        return Ok(vec![whole]);
    }
    let allow_only = [bpf::ret(allow)];
    let mut programs = Vec::new();
    for (abi, _) in bodies.iter().filter(|(_, b)| bpf::constant_return(b).is_none()) {
        let routes: Vec<(Abi, &[Insn])> = bodies
            .iter()
            .map(|(other, b)| {
                let keep = other == abi || bpf::constant_return(b).is_some();
                (*other, if keep { &b[..] } else { &allow_only[..] })
            })
            .collect();
        let program = layout(host, &routes);
        if program.len() > BPF_MAXINSNS {
            return Err(SeccompError::FilterTooLarge { arch: abi.scmp_name(), len: program.len(), max: BPF_MAXINSNS });
        }
        programs.push(program);
    }
    Ok(programs)
}

/// seccompiler's code for `plan` restricted to `abi`'s syscall numbers, without its arch check.
fn body(host: Host, abi: Abi, plan: &Plan<'_>) -> Result<Vec<Insn>, SeccompError> {
    let backend = |source| SeccompError::Backend { arch: abi.scmp_name(), source };
    let filter = SeccompFilter::new(
        rule_map(abi, &plan.rules).map_err(backend)?,
        plan.on_mismatch.to_seccompiler(),
        plan.on_match.to_seccompiler(),
        host.target_arch(),
    )
    .map_err(backend)?;
    let program = BpfProgram::try_from(filter).map_err(|error| match error {
        BackendError::FilterTooLarge(len) => {
            SeccompError::FilterTooLarge { arch: abi.scmp_name(), len, max: BPF_MAXINSNS }
        }
        source => backend(source),
    })?;
    bpf::strip_prologue(program, host.native_abi().audit_arch()).ok_or_else(|| {
        SeccompError::Internal("seccompiler's program does not start with the expected arch check".to_owned())
    })
}

/// seccompiler's input for one ABI: syscall number -> alternative rules, where an empty list
/// means "unconditionally". Names this ABI lacks are skipped (they exist elsewhere: checked).
fn rule_map(abi: Abi, rules: &[&Rule<'_>]) -> Result<BTreeMap<i64, Vec<SeccompRule>>, BackendError> {
    // `None`: some rule matches the syscall unconditionally, which makes its other rules moot.
    let mut map: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for rule in rules {
        let Some(nr) = abi.syscall_nr(rule.name) else {
            continue;
        };
        let entry = map.entry(i64::from(nr)).or_insert_with(|| Some(Vec::new()));
        if rule.conditions.is_empty() {
            *entry = None;
        } else if let Some(alternatives) = entry {
            alternatives.push(SeccompRule::new(rule.conditions.clone())?);
        }
    }
    Ok(map.into_iter().map(|(nr, alternatives)| (nr, alternatives.unwrap_or_default())).collect())
}

/// Lays out one program: a dispatcher on the caller's ABI, then each ABI's body. ABIs without
/// a route are killed.
fn layout(host: Host, routes: &[(Abi, &[Insn])]) -> Vec<Insn> {
    let kill = bpf::ret(libc::SECCOMP_RET_KILL_PROCESS);
    let mut asm = Asm::default();
    let routed: Vec<_> = routes.iter().map(|&(abi, body)| (abi, asm.label(), body)).collect();
    let label_of = |abi| routed.iter().find(|r| r.0 == abi).map(|r| r.1);
    // On x86_64 hosts x86_64 and x32 calls share AUDIT_ARCH_X86_64 and need a second look.
    let x86_split = (host == Host::X86_64).then(|| asm.label());

    asm.insn(bpf::stmt(BPF_LD | BPF_W | BPF_ABS, DATA_ARCH));
    if let Some(split) = x86_split {
        asm.insn(bpf::jump(BPF_JMP | BPF_JEQ | BPF_K, Abi::X86_64.audit_arch(), 0, 1));
        asm.jump_to(split);
    }
    for &(abi, label, _) in &routed {
        if x86_split.is_some() && matches!(abi, Abi::X86_64 | Abi::X32) {
            continue;
        }
        asm.insn(bpf::jump(BPF_JMP | BPF_JEQ | BPF_K, abi.audit_arch(), 0, 1));
        asm.jump_to(label);
    }
    asm.insn(kill.clone());

    if let Some(split) = x86_split {
        asm.place(split);
        asm.insn(bpf::stmt(BPF_LD | BPF_W | BPF_ABS, DATA_NR));
        asm.insn(bpf::jump(BPF_JMP | BPF_JSET | BPF_K, X32_SYSCALL_BIT, 0, 1));
        for abi in [Abi::X32, Abi::X86_64] {
            match label_of(abi) {
                Some(label) => asm.jump_to(label),
                None => asm.insn(kill.clone()),
            }
        }
    }
    for (_, label, body) in routed {
        asm.place(label);
        asm.extend(body);
    }
    asm.finish()
}

/// Refuses, before anything is installed, what the kernel would refuse at install time.
pub(crate) fn check_programs(programs: &[Vec<Insn>]) -> Result<(), SeccompError> {
    for program in programs {
        bpf::check_program(program).map_err(SeccompError::Internal)?;
    }
    let total: usize = programs.iter().map(|p| p.len() + PER_FILTER_PENALTY).sum();
    if total > MAX_INSNS_PER_PATH {
        return Err(SeccompError::TooManyInstructions { total, max: MAX_INSNS_PER_PATH });
    }
    Ok(())
}

/// The names of one profile entry, shortened for error messages.
fn describe_names(names: &[String]) -> String {
    const SHOWN: usize = 4;
    let mut text = names.iter().take(SHOWN).map(|name| format!("{name:?}")).collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    format!("syscalls [{text}]")
}
