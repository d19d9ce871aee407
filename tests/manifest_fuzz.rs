//! No input makes the manifest reader panic: random bytes, and valid manifests mutated
//! at random (bytes flipped, lines dropped, duplicated or swapped). Every diagnostic it
//! gives points inside the file it names and renders.

use std::path::{Path, PathBuf};

use proptest::prelude::*;

fn sample_texts() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect()
}

fn load_and_check(text: String) {
    let name = PathBuf::from("fuzz.yaml");
    let lines = text.lines().count().max(1) + 1;
    let loaded = berth_api::load_texts(vec![(name, text)]);
    for d in &loaded.diagnostics {
        assert!(
            d.line <= lines,
            "line {} beyond the file's {lines}: {d}",
            d.line
        );
    }
    let _ = loaded.sources.render(&loaded.diagnostics, false);
    let _ = loaded.into_manifests();
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, byte: u8 },
    Insert { at: usize, text: String },
    DropLine(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let fragments = prop::sample::select(vec![
        ":",
        "- ",
        "{",
        "}",
        "[",
        "]",
        "\"",
        "'",
        "&a ",
        "*a",
        "!!str ",
        "\t",
        "\n",
        "  ",
        "~",
        "---\n",
        "? ",
        "|\n",
        ">-\n",
        "#",
        "\u{feff}",
        "é",
        "0x1F",
        "1e400",
        "-",
        "null",
        "%YAML 1.2\n",
    ]);
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Flip { at, byte }),
        (any::<usize>(), fragments).prop_map(|(at, t)| Mutation::Insert {
            at,
            text: t.to_owned()
        }),
        any::<usize>().prop_map(Mutation::DropLine),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
    ]
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let n = lines.len().max(1);
    match m {
        Mutation::Flip { at, byte } => {
            let mut bytes = text.as_bytes().to_vec();
            if !bytes.is_empty() {
                let i = at % bytes.len();
                bytes[i] = *byte;
            }
            return String::from_utf8_lossy(&bytes).into_owned();
        }
        Mutation::Insert { at, text: t } => {
            let mut s = text.to_owned();
            let mut i = at % (s.len() + 1);
            while !s.is_char_boundary(i) {
                i -= 1;
            }
            s.insert_str(i, t);
            return s;
        }
        Mutation::DropLine(i) if !lines.is_empty() => {
            lines.remove(i % n);
        }
        Mutation::DuplicateLine(i) if !lines.is_empty() => {
            let l = lines[i % n].clone();
            lines.insert(i % n, l);
        }
        Mutation::SwapLines(a, b) if !lines.is_empty() => lines.swap(a % n, b % n),
        _ => {}
    }
    lines.join("\n")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        load_and_check(String::from_utf8_lossy(&bytes).into_owned());
    }

    #[test]
    fn mutated_manifests_never_panic(
        which in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let texts = sample_texts();
        let mut text = which.get(&texts).clone();
        for m in &mutations {
            text = apply(&text, m);
        }
        load_and_check(text);
    }
}

#[test]
fn deep_nesting_and_huge_numbers_are_errors_not_crashes() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    load_and_check(deep);
    let deep_map = (0..200)
        .map(|i| format!("{}a:", "  ".repeat(i)))
        .collect::<Vec<_>>()
        .join("\n");
    load_and_check(deep_map);
    load_and_check("apiVersion: berth.dev/v1\nkind: Environment\nmetadata: {name: x}\nspec: {replicas: 99999999999999999999999}\n".into());
}
