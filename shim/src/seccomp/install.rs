//! Loading compiled programs into the kernel.

use super::{CompiledSeccomp, SeccompError};

// The kernel reads our programs as `struct sock_filter`; seccompiler's type must match it.
const _: () = {
    assert!(size_of::<seccompiler::sock_filter>() == size_of::<libc::sock_filter>());
    assert!(align_of::<seccompiler::sock_filter>() == align_of::<libc::sock_filter>());
};

impl CompiledSeccomp {
    /// Installs every program on the calling thread with seccomp(2) `SECCOMP_SET_MODE_FILTER`
    /// and the profile's flags, in order.
    ///
    /// The caller must have set no_new_privs (`prctl(PR_SET_NO_NEW_PRIVS)`) or hold
    /// CAP_SYS_ADMIN. Meant for the forked, single-threaded container child right before
    /// execve: it allocates nothing and only makes the syscalls. Once the first program is in,
    /// a failure leaves the thread with the programs installed so far, so the caller must not
    /// go on to exec the container process after an error.
    pub fn install(&self) -> Result<(), SeccompError> {
        let count = self.programs.len();
        for (position, program) in self.programs.iter().enumerate() {
            let len = u16::try_from(program.len())
                .map_err(|_| SeccompError::Internal("program longer than a sock_fprog can hold".to_owned()))?;
            let fprog = libc::sock_fprog { len, filter: program.as_ptr().cast::<libc::sock_filter>().cast_mut() };
            // SAFETY: `fprog` points at `len` initialised instructions whose layout equals
            // `struct sock_filter` (asserted above); both outlive the call, and the kernel
            // only reads them (it copies the program before returning).
            let rc = unsafe {
                libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, self.flags, &raw const fprog)
            };
            match rc {
                0 => {}
                // With SECCOMP_FILTER_FLAG_TSYNC a positive result names the thread that could
                // not be synchronised.
                tid if tid > 0 => return Err(SeccompError::ThreadSync { tid }),
                _ => {
                    return Err(SeccompError::Install {
                        index: position + 1,
                        count,
                        source: std::io::Error::last_os_error(),
                    });
                }
            }
        }
        Ok(())
    }
}
