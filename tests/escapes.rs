//! The container must not reach the host through tote-shim itself: no
//! host descriptor survives into it (runc's CVE-2024-21626 class) and the
//! host's tote-shim binary cannot be overwritten through /proc/<pid>/exe
//! (runc's CVE-2019-5736 class), neither at create nor at exec.

mod support;

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::json;
use support::{SHIM, TestContainer};

/// Descriptor numbers open in `pid`, from the host's view.
fn open_fds(pid: i64) -> Vec<u32> {
    let mut fds: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect();
    fds.sort();
    fds
}

/// Opens `dir` and arranges for the spawned command to inherit it as
/// descriptor `target`, without close-on-exec: a careless caller.
fn leak_dir_as(cmd: &mut std::process::Command, dir: &Path, target: i32) {
    let fd = std::fs::File::open(dir).unwrap().into_raw_fd();
    // SAFETY: dup2 and close are async-signal-safe and touch only descriptors.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, target) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn the_container_process_holds_only_stdio() {
    let c = TestContainer::new("fds").args(&["sleep", "60"]);
    c.write_config();
    let bundle = c.bundle.to_string_lossy().into_owned();
    let mut create = c.shim(&["create", "--bundle", &bundle, &c.id]);
    create.stdout(Stdio::null()).stderr(Stdio::null());
    leak_dir_as(&mut create, Path::new("/"), 7);
    assert!(create.status().unwrap().success());
    c.start().ok();
    let pid = c.state()["pid"].as_i64().unwrap();
    assert_eq!(open_fds(pid), vec![0, 1, 2], "the init kept descriptors beyond stdio");

    let pid_file = c.bundle.join("exec.pid");
    let mut exec = c.shim(&["exec", "--detach", "--pid-file", &pid_file.to_string_lossy(), &c.id, "sleep", "60"]);
    exec.stdout(Stdio::null()).stderr(Stdio::null());
    leak_dir_as(&mut exec, Path::new("/"), 9);
    assert!(exec.status().unwrap().success());
    let exec_pid: i64 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    assert_eq!(open_fds(exec_pid), vec![0, 1, 2], "the exec'd process kept descriptors beyond stdio");
    c.delete(true).ok();
}

#[test]
fn preserved_descriptors_are_the_only_extra_ones() {
    // The positive control: --preserve-fds does pass descriptor 3 on.
    let c = TestContainer::new("preserve").sh("for f in /proc/self/fd/*; do echo fd=$f $(readlink $f); done");
    c.write_config();
    let bundle = c.bundle.to_string_lossy().into_owned();
    let marker = support::scratch().join(format!("preserved-{}", c.id));
    std::fs::write(&marker, "x").unwrap();
    let mut cmd = c.shim(&["run", "--preserve-fds", "1", "--bundle", &bundle, &c.id]);
    let file = std::fs::File::open(&marker).unwrap().into_raw_fd();
    // SAFETY: dup2 touches only descriptors.
    unsafe {
        cmd.pre_exec(move || {
            libc::dup2(file, 3);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    // The shell's own directory handle for the glob is gone by the time
    // readlink runs, so it is the one line without a target.
    let fds: Vec<&str> = text
        .lines()
        .filter(|l| l.split_whitespace().count() == 2)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(fds, ["fd=/proc/self/fd/0", "fd=/proc/self/fd/1", "fd=/proc/self/fd/2", "fd=/proc/self/fd/3"], "{text}");
    assert!(text.contains(&marker.to_string_lossy().into_owned()), "{text}");
    std::fs::remove_file(marker).unwrap();
}

#[test]
fn a_working_directory_through_a_host_descriptor_is_refused() {
    let outside = support::scratch().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("host-secret"), "secret").unwrap();
    // Descriptors tote-shim leaked or opened itself: every number must fail.
    for n in 3..12 {
        let c = TestContainer::new("cwd-leak")
            .sh("cat host-secret 2>/dev/null && echo escaped=yes; echo pwd=$(pwd)")
            .with(|cfg| cfg["process"]["cwd"] = json!(format!("/proc/self/fd/{n}")));
        c.write_config();
        let bundle = c.bundle.to_string_lossy().into_owned();
        let mut cmd = c.shim(&["run", "--bundle", &bundle, &c.id]);
        leak_dir_as(&mut cmd, &outside, n);
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!stdout.contains("escaped=yes") && !stdout.contains("secret"), "fd {n}: {stdout}");
        assert!(!out.status.success(), "fd {n}: a cwd of /proc/self/fd/{n} was accepted: {stdout}");
    }
    // And a descriptor passed on purpose still cannot be the way out.
    let c = TestContainer::new("cwd-preserved")
        .sh("cat host-secret && echo escaped=yes")
        .with(|cfg| cfg["process"]["cwd"] = json!("/proc/self/fd/3"));
    c.write_config();
    let bundle = c.bundle.to_string_lossy().into_owned();
    let mut cmd = c.shim(&["run", "--preserve-fds", "1", "--bundle", &bundle, &c.id]);
    leak_dir_as(&mut cmd, &outside, 3);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("escaped"), "escaped through a preserved descriptor");
    assert!(stderr.contains("working directory"), "{stderr}");
}

/// A pipe whose buffer is already full: a process writing to it blocks.
fn full_pipe() -> (OwnedFd, OwnedFd) {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let flags = nix::fcntl::fcntl(write.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap();
    let nonblock = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(write.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(nonblock)).unwrap();
    // SAFETY: a temporary File over our own descriptor, not closed (ManuallyDrop).
    let mut file = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(write.as_raw_fd()) });
    while file.write(&[0u8; 4096]).is_ok() {}
    nix::fcntl::fcntl(write.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::from_bits_truncate(flags)))
        .unwrap();
    (read, write)
}

fn sha256(path: &str) -> String {
    let out = std::process::Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

/// The attack of runc's CVE-2019-5736, from inside the container: find a
/// process running tote-shim's binary, keep a read-only handle on its
/// executable, wait until that process is gone (while it runs, writes fail
/// with ETXTBSY anyway) and then reopen the handle for writing.
const ATTACK: &str = r#"
out=/tmp/attack
for p in /proc/[0-9]*; do
  exe=$(readlink $p/exe 2>/dev/null) || continue
  case "$exe" in *tote-shim*) target=${p#/proc/}; echo "exe=$exe" > $out; break;; esac
done
[ -n "$target" ] || { echo target=none > $out; exit 1; }
exec 3< /proc/$target/exe || { echo open=refused >> $out; exit 1; }
echo armed >> $out
while [ -e /proc/$target ]; do sleep 0.02; done
(echo pwned >> /proc/self/fd/3) 2>/dev/null && echo write=appended >> $out
(cat /bin/busybox > /proc/self/fd/3) 2>/dev/null && echo write=replaced >> $out
echo done >> $out
"#;

/// Copies tote-shim's shared libraries into the rootfs, so its binary can
/// actually run inside the container as an attacker needs it to.
fn add_shim_libraries(c: &TestContainer) {
    let out = std::process::Command::new("ldd").arg(SHIM).output().unwrap();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(path) = line.split_whitespace().find(|w| w.starts_with('/')) else { continue };
        let dest = c.rootfs().join(path.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(path, &dest).unwrap();
    }
}

/// Polls until `file` contains `text` (at most 10 s).
#[track_caller]
fn wait_for_text(file: &Path, text: &str) -> String {
    for _ in 0..1000 {
        let content = std::fs::read_to_string(file).unwrap_or_default();
        if content.contains(text) || content.contains("target=none") || content.contains("refused") {
            return content;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{} never said {text:?}: {:?}", file.display(), std::fs::read_to_string(file));
}

/// `attacker` (whose pid namespace also holds `blocked`'s process) runs the
/// attack; the blocked tote-shim is released; no write may have landed.
fn attack_and_check(attacker: &TestContainer, readonly_binary: bool, blocked: Child, read_end: OwnedFd) {
    let before = sha256(SHIM);
    let report = attacker.rootfs().join("tmp/attack");
    for _ in 0..500 {
        let ran = attacker.exec(&["sh", "-c", "for p in /proc/[0-9]*; do readlink $p/exe; done"]);
        if ran.stdout.contains("tote-shim") {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(attacker.shim_detached(&["exec", "--detach", &attacker.id, "sh", "-c", ATTACK]), 0);
    let armed = wait_for_text(&report, "armed");
    assert!(armed.contains("armed"), "the attack never got a handle on the binary: {armed}");
    drop(read_end); // the blocked process can finish writing and exit
    let mut blocked = blocked;
    let _ = blocked.wait();
    let result = wait_for_text(&report, "done");
    assert!(!result.contains("write="), "the container wrote to tote-shim's binary: {result}");
    let exe = result.lines().find_map(|l| l.strip_prefix("exe=")).unwrap().to_string();
    if readonly_binary {
        assert!(exe.ends_with("tote-shim"), "{exe}");
    } else {
        assert!(exe.contains("memfd:tote-shim"), "not running from the sealed copy: {exe}");
    }
    assert_eq!(sha256(SHIM), before, "tote-shim's binary changed");
}

fn exec_into_proc_self_exe(readonly_binary: bool) {
    let mut c = TestContainer::new("cve-2019-5736-exec").args(&["sleep", "60"]);
    c.readonly_binary = readonly_binary;
    add_shim_libraries(&c);
    c.create().ok();
    c.start().ok();
    let (read_end, write_end) = full_pipe();
    // The exec'd program is /proc/self/exe: tote-shim's binary, now a
    // process inside the container, stuck writing its help to a full pipe.
    let blocked = c
        .shim(&["exec", &c.id, "/proc/self/exe", "--help"])
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    attack_and_check(&c, readonly_binary, blocked, read_end);
    c.delete(true).ok();
}

fn init_is_proc_self_exe(readonly_binary: bool) {
    // The attacker's container owns the pid namespace; the victim joins it,
    // so the attacker outlives the victim's init.
    let mut attacker = TestContainer::new("cve-2019-5736-attacker").args(&["sleep", "60"]);
    attacker.readonly_binary = readonly_binary;
    attacker.create().ok();
    attacker.start().ok();
    let pid = attacker.state()["pid"].as_i64().unwrap();
    let mut victim = TestContainer::new("cve-2019-5736-init").args(&["/proc/self/exe", "--help"]).with(|cfg| {
        let namespaces = cfg["linux"]["namespaces"].as_array_mut().unwrap();
        namespaces.retain(|n| n["type"] != "pid");
        namespaces.push(json!({"type": "pid", "path": format!("/proc/{pid}/ns/pid")}));
    });
    victim.readonly_binary = readonly_binary;
    add_shim_libraries(&victim);
    victim.write_config();
    let (read_end, write_end) = full_pipe();
    let bundle = victim.bundle.to_string_lossy().into_owned();
    let blocked = victim
        .shim(&["run", "--bundle", &bundle, &victim.id])
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    victim.wait_status("running");
    attack_and_check(&attacker, readonly_binary, blocked, read_end);
    attacker.delete(true).ok();
}

#[test]
fn exec_of_proc_self_exe_cannot_overwrite_the_host_binary_sealed_copy() {
    exec_into_proc_self_exe(false);
}

#[test]
fn exec_of_proc_self_exe_cannot_overwrite_the_host_binary_readonly_mount() {
    exec_into_proc_self_exe(true);
}

#[test]
fn an_init_of_proc_self_exe_cannot_overwrite_the_host_binary_sealed_copy() {
    init_is_proc_self_exe(false);
}

#[test]
fn an_init_of_proc_self_exe_cannot_overwrite_the_host_binary_readonly_mount() {
    init_is_proc_self_exe(true);
}
