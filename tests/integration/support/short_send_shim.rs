//! An LD_PRELOAD library for tests (built with `rustc --crate-type cdylib` by the test that
//! uses it, never part of the workspace): every `send` on a socket takes at most 16 KiB, as
//! Shadow's simulated TCP takes at most 64 KiB however much room its buffer has. The first shortened send of
//! a process creates the file named by `ALLIUM_TEST_SHORT_SEND_MARK`, so a test can tell that
//! the library was loaded and did shorten sends.

use std::ffi::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

extern "C" {
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    fn getenv(name: *const c_char) -> *const c_char;
    fn open(path: *const c_char, flags: c_int, mode: c_int) -> c_int;
    fn close(fd: c_int) -> c_int;
}

type SendFn = unsafe extern "C" fn(c_int, *const c_void, usize, c_int) -> isize;

const MAX_SEND: usize = 16_384;
const RTLD_NEXT: *mut c_void = -1isize as *mut c_void;
const O_WRONLY_CREAT: c_int = 0o1 | 0o100;

static REAL_SEND: AtomicUsize = AtomicUsize::new(0);
static MARKED: AtomicBool = AtomicBool::new(false);

#[no_mangle]
pub unsafe extern "C" fn send(fd: c_int, buf: *const c_void, len: usize, flags: c_int) -> isize {
    let mut f = REAL_SEND.load(Ordering::Acquire);
    if f == 0 {
        f = dlsym(RTLD_NEXT, b"send\0".as_ptr().cast()) as usize;
        REAL_SEND.store(f, Ordering::Release);
    }
    let real: SendFn = std::mem::transmute(f);
    if len > MAX_SEND && !MARKED.swap(true, Ordering::Relaxed) {
        let path = getenv(b"ALLIUM_TEST_SHORT_SEND_MARK\0".as_ptr().cast());
        if !path.is_null() {
            let m = open(path, O_WRONLY_CREAT, 0o600);
            if m >= 0 {
                close(m);
            }
        }
    }
    real(fd, buf, len.min(MAX_SEND), flags)
}
