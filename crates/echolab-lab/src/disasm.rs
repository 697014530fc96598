//! The racy counter's machine code, read back from the binary: `objdump` disassembles the
//! racy loop ([`echolab_sys::racy::RACY_SYMBOL`]) and [`classify`] checks that its
//! increment is the lecture's three steps, a load (L), an add to a register (U) and a store
//! (S), and not one read-modify-write instruction (`addq $1,(%rdi)`, `incq`, `lock xadd`)
//! that no context switch could split.
//!
//! The counter experiment prints this listing beside its result, as the lecture's
//! assembly slide does; a test runs the same check on the test binary.

use std::path::Path;
use std::process::Command;

/// What the racy loop's instructions do to memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Steps {
    /// Loads from memory into a register (`mov (%rdi),%rax`, `ldr`).
    pub loads: Vec<String>,
    /// Additions whose destination is a register (`add $0x1,%rax`).
    pub register_adds: Vec<String>,
    /// Stores of a register into memory (`mov %rax,(%rdi)`, `str`).
    pub stores: Vec<String>,
    /// Instructions that read, modify and write memory in one go (`add $1,(%rdi)`,
    /// `inc`/`xadd` on memory, anything `lock`-prefixed, aarch64's `ldadd`/`stadd`).
    pub read_modify_writes: Vec<String>,
}

impl Steps {
    /// True when the increment is split: at least one load, register add and store, and
    /// no read-modify-write of memory.
    pub fn is_split(&self) -> bool {
        !self.loads.is_empty()
            && !self.register_adds.is_empty()
            && !self.stores.is_empty()
            && self.read_modify_writes.is_empty()
    }
}

/// Splits `"mov (%rdi,%rcx,8),%rax"` into the mnemonic and its top-level operands.
fn parse(instruction: &str) -> (String, Vec<String>) {
    let instruction = instruction.trim();
    let (mnemonic, rest) = instruction
        .split_once(char::is_whitespace)
        .unwrap_or((instruction, ""));
    let mut operands = Vec::new();
    let (mut depth, mut current) = (0i32, String::new());
    for ch in rest.trim().chars() {
        match ch {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            _ => {}
        }
        if ch == ',' && depth == 0 {
            operands.push(current.trim().to_string());
            current.clear();
        } else {
            current.push(ch);
        }
    }
    if !current.trim().is_empty() {
        operands.push(current.trim().to_string());
    }
    (mnemonic.to_ascii_lowercase(), operands)
}

/// True for a memory operand in AT&T (`(%rdi)`, `8(%rsp)`) or aarch64 (`[x0]`) syntax.
fn is_memory(operand: &str) -> bool {
    operand.contains('(') || operand.contains('[')
}

/// The mnemonic without AT&T's size suffix (`addq` is `add`, `subb` is `sub`, `sub` stays).
fn base_mnemonic(mnemonic: &str) -> &str {
    const SIZED: [&str; 9] = [
        "mov", "add", "inc", "sub", "dec", "adc", "xadd", "neg", "xchg",
    ];
    match mnemonic.strip_suffix(['q', 'l', 'w', 'b']) {
        Some(base) if !SIZED.contains(&mnemonic) && SIZED.contains(&base) => base,
        _ => mnemonic,
    }
}

/// True for a memory operand on the thread's own stack (`-0x10(%rsp)`, `[sp, #8]`).
fn is_stack(operand: &str) -> bool {
    is_memory(operand)
        && (operand.contains("%rsp") || operand.contains("%rbp") || operand.contains("[sp"))
}

/// Sorts each instruction of a listing (objdump's AT&T or aarch64 text, one instruction a
/// line, without addresses) by what it does to memory other than the stack.
pub fn classify<S: AsRef<str>>(instructions: &[S]) -> Steps {
    let mut steps = Steps::default();
    for line in instructions {
        let line = line.as_ref().trim();
        let (mnemonic, operands) = parse(line);
        let base = base_mnemonic(&mnemonic);
        // A debug build spills its arguments to the stack: not the shared counter.
        if operands.iter().any(|op| is_stack(op)) {
            continue;
        }
        // x86's lock prefix and xchg with memory, aarch64's atomic instructions: one
        // indivisible read-modify-write.
        let atomic = mnemonic.starts_with("lock")
            || (base == "xchg" && operands.iter().any(|op| is_memory(op)))
            || ["ldadd", "stadd", "swp", "cas", "ldxr", "ldaxr"]
                .iter()
                .any(|rmw| mnemonic.starts_with(rmw));
        if atomic {
            steps.read_modify_writes.push(line.to_string());
            continue;
        }
        // AT&T order: the destination is the last operand (aarch64's `ldr` and `str` are
        // the only memory instructions it has; its `add` works on registers).
        let to_memory = operands.last().is_some_and(|dst| is_memory(dst));
        let from_memory = operands.first().is_some_and(|src| is_memory(src));
        let bucket = match base {
            "ldr" => Some(&mut steps.loads),
            "str" => Some(&mut steps.stores),
            "mov" if operands.len() == 2 && from_memory && !to_memory => Some(&mut steps.loads),
            "mov" if operands.len() == 2 && to_memory && !from_memory => Some(&mut steps.stores),
            "add" | "inc" | "sub" | "dec" | "adc" | "xadd" | "neg" | "not" if to_memory => {
                Some(&mut steps.read_modify_writes)
            }
            "add" | "inc" => Some(&mut steps.register_adds),
            _ => None,
        };
        if let Some(bucket) = bucket {
            bucket.push(line.to_string());
        }
    }
    steps
}

/// The instructions of `symbol` in `exe`, as objdump prints them (AT&T syntax on x86,
/// addresses dropped), or why they could not be read (no objdump, no such symbol).
pub fn listing(exe: &Path, symbol: &str) -> Result<Vec<String>, String> {
    let output = Command::new("objdump")
        .arg("-d")
        .arg("--no-show-raw-insn")
        .arg(format!("--disassemble={symbol}"))
        .arg(exe)
        .output()
        .map_err(|err| format!("cannot run objdump (binutils): {err}"))?;
    if !output.status.success() {
        return Err(format!(
            "objdump failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let header = format!("<{symbol}>:");
    let instructions: Vec<String> = text
        .lines()
        .skip_while(|line| !line.trim_end().ends_with(&header))
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| line.split_once(":\t").map(|(_, insn)| insn))
        // objdump pads with tabs and notes jump targets as `<symbol+0x1e>`.
        .map(|insn| {
            let insn = insn.split(" <").next().unwrap_or(insn);
            insn.split_whitespace().collect::<Vec<_>>().join(" ")
        })
        .collect();
    if instructions.is_empty() {
        return Err(format!(
            "objdump found no symbol {symbol} in {}",
            exe.display()
        ));
    }
    Ok(instructions)
}

/// The racy loop of the running binary: its listing and how it classifies.
pub fn racy_loop() -> Result<(Vec<String>, Steps), String> {
    let exe = std::env::current_exe().map_err(|err| format!("cannot find this binary: {err}"))?;
    let instructions = listing(&exe, echolab_sys::racy::RACY_SYMBOL)?;
    let steps = classify(&instructions);
    Ok((instructions, steps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lecture_listing_is_split() {
        // badcnt.c's loop body, from the lecture's slide.
        let steps = classify(&["movq cnt(%rip),%rdx", "addq $1,%rdx", "movq %rdx,cnt(%rip)"]);
        assert_eq!(steps.loads, ["movq cnt(%rip),%rdx"]);
        assert_eq!(steps.register_adds, ["addq $1,%rdx"]);
        assert_eq!(steps.stores, ["movq %rdx,cnt(%rip)"]);
        assert!(steps.is_split());
    }

    /// What a compiler makes of a relaxed load-then-store: one instruction, which a
    /// context switch cannot split (the bug this module exists to catch).
    #[test]
    fn fused_increments_are_not_split() {
        for fused in [
            "addq $0x1,(%rdi)",
            "add $0x1,0x8(%rdi)",
            "incq (%rdi)",
            "lock xadd %rax,(%rdi)",
            "lock addq $0x1,(%rdi)",
            "ldadd x1, x2, [x0]",
        ] {
            let steps = classify(&["mov (%rdi),%rax", "add $0x1,%rax", "mov %rax,(%rdi)", fused]);
            assert_eq!(steps.read_modify_writes, [fused], "{fused}");
            assert!(!steps.is_split(), "{fused}");
        }
        assert!(!classify(&["addq $0x1,(%rdi)"]).is_split());
    }

    #[test]
    fn a_missing_step_is_not_split() {
        assert!(!classify(&["add $0x1,%rax", "mov %rax,(%rdi)"]).is_split());
        assert!(!classify(&["mov (%rdi),%rax", "mov %rax,(%rdi)"]).is_split());
        assert!(!classify(&["mov (%rdi),%rax", "add $0x1,%rax"]).is_split());
        assert!(!classify::<&str>(&[]).is_split());
        // Register-to-register moves are neither loads nor stores.
        let steps = classify(&["mov %rdi,%rax", "mov (%rdi,%rcx,8),%rax"]);
        assert_eq!(steps.loads, ["mov (%rdi,%rcx,8),%rax"]);
        assert!(steps.stores.is_empty());
        // Spills to the thread's own stack are not the shared counter.
        let steps = classify(&[
            "mov %rdi,-0x10(%rsp)",
            "addq $0x1,0x8(%rsp)",
            "str x0, [sp, #8]",
        ]);
        assert_eq!(steps, Steps::default());
    }

    #[test]
    fn only_what_writes_memory_counts_as_a_write() {
        let steps = classify(&[
            "cmpq $0x0,(%rdi)",
            "test %rsi,%rsi",
            "sub $0x1,%rax",
            "dec %rsi",
            "xchg %rax,%rdx",
            "inc %rax",
            "mov %rax,%rdx",
        ]);
        assert_eq!(
            steps,
            Steps {
                register_adds: vec!["inc %rax".to_string()],
                ..Steps::default()
            }
        );
        for rmw in [
            "xchg %rax,(%rdi)",
            "subq $0x1,(%rdi)",
            "decq (%rdi)",
            "adc $0x0,(%rdi)",
        ] {
            assert_eq!(classify(&[rmw]).read_modify_writes, [rmw], "{rmw}");
        }
    }

    #[test]
    fn size_suffixes_are_dropped_once() {
        assert_eq!(base_mnemonic("addq"), "add");
        assert_eq!(base_mnemonic("subb"), "sub");
        assert_eq!(base_mnemonic("sub"), "sub");
        assert_eq!(base_mnemonic("movl"), "mov");
        assert_eq!(base_mnemonic("ldr"), "ldr");
        assert_eq!(base_mnemonic("jb"), "jb");
    }

    #[test]
    fn aarch64_steps() {
        let steps = classify(&["ldr x8, [x0]", "add x8, x8, #0x1", "str x8, [x0]"]);
        assert!(steps.is_split(), "{steps:?}");
        assert_eq!(
            (
                steps.loads.len(),
                steps.register_adds.len(),
                steps.stores.len()
            ),
            (1, 1, 1)
        );
        assert!(!classify(&["ldr x8, [x0]", "ldadd x1, x2, [x0]", "str x8, [x0]"]).is_split());
    }

    /// The proof the issue asks for: the racy loop compiled into this very binary is a
    /// separate load, add and store. Needs objdump (binutils; .ci/run installs it).
    #[test]
    fn the_compiled_racy_loop_is_a_separate_load_add_and_store() {
        if Command::new("objdump").arg("--version").output().is_err() {
            eprintln!("SKIPPED: objdump (binutils) is not installed, so the racy loop cannot be disassembled here");
            return;
        }
        let (instructions, steps) = racy_loop().unwrap();
        assert!(steps.is_split(), "{instructions:#?} -> {steps:?}");
        assert_eq!(steps.loads.len(), 1, "{instructions:#?}");
        assert_eq!(steps.stores.len(), 1, "{instructions:#?}");
    }
}
