//! What a newcomer hits trying echolab with fresh eyes, one test per finding; each fails
//! without its fix.

mod support;

use std::process::Stdio;

use support::*;

/// `client --udp --send /dev/zero` read the device into memory until the kernel killed
/// something (a FIFO: it waited for a writer forever); TCP client refused it at once. Both
/// now refuse a file that is not a regular one: one line, exit 2.
#[test]
fn udp_client_refuses_to_send_what_is_not_a_regular_file() {
    let dir = std::env::temp_dir().join(format!("echolab-newcomer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A FIFO nobody writes: opening it blocks, so a client that reads it never returns.
    let fifo = dir.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    for path in [fifo.as_path(), std::path::Path::new("/dev/zero")] {
        let child = echolab()
            .args(["client", "--udp", "127.0.0.1:9", "--send"])
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = finish_bounded(child, STEP);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert_eq!(
            stderr.trim_end(),
            format!(
                "echolab client: cannot send {}: not a regular file",
                path.display()
            )
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
