//! Scheduling priority of background threads.

/// Lowers the calling thread's scheduling priority (Linux: nice 10) so that the threads that
/// forward cells preempt it: under the kernel's fair scheduler a nice-10 thread gets about a
/// tenth of a core that a normal thread also wants, and all the CPU nobody else wants. Raising
/// nice needs no privilege. Elsewhere this does nothing. True if the priority was lowered.
pub fn yield_to_forwarding() -> bool {
    sys::lower()
}

/// How much lower than normal (nice 0).
const NICE: libc::c_int = 10;

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod sys {
    pub fn lower() -> bool {
        // On Linux a thread is a task of its own: PRIO_PROCESS with the thread id sets this
        // thread's nice value only.
        // SAFETY: plain system calls with integer arguments.
        unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, super::NICE) == 0
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    pub fn lower() -> bool {
        let _ = super::NICE;
        false
    }
}

#[cfg(test)]
mod tests {
    /// A thread lowered by it runs at the lower priority, and its neighbours do not.
    #[test]
    #[cfg(target_os = "linux")]
    fn only_the_calling_thread_is_lowered() {
        let nice = |tid: libc::pid_t| {
            let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
            let after_name = stat.rsplit_once(')').unwrap().1;
            // Field 19 of stat is nice; 17 fields after the name's closing parenthesis.
            after_name.split_whitespace().nth(16).unwrap().parse::<i32>().unwrap()
        };
        #[allow(unsafe_code)]
        let me = unsafe { libc::gettid() };
        let before = nice(me);
        let lowered = std::thread::spawn(move || {
            assert!(super::yield_to_forwarding());
            #[allow(unsafe_code)]
            let tid = unsafe { libc::gettid() };
            nice(tid)
        })
        .join()
        .unwrap();
        assert_eq!(lowered, (before + super::NICE).min(19));
        assert_eq!(nice(me), before, "the calling thread's neighbours keep their priority");
    }
}
