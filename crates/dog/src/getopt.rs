//! A GNU `getopt_long` work-alike (argument permutation, clustered short
//! options, attached arguments, unambiguous long-option prefixes, `--`,
//! `POSIXLY_CORRECT`), with glibc's exact diagnostics.
//!
//! dog's command line is parsed by glibc in the original, and scripts and
//! golden files depend on both what it accepts and the words of its
//! complaints, which no argument-parsing crate reproduces. The parser is
//! an iterator so that the caller can act on each option as it is seen:
//! the original validates `-p`, prints `-h` help and rejects bad option
//! values in command-line order, and the first of them wins.

/// One option of the accepted set: short letter, long name, and whether
/// it takes an argument (all of dog's options that take one require it).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct OptSpec {
    pub short: u8,
    pub long: &'static str,
    pub has_arg: bool,
}

/// A parse failure, rendered by [`GetoptError::message`] exactly as glibc
/// prints it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum GetoptError {
    /// A short option letter not in the set.
    Invalid(u8),
    /// A short option that needs an argument came last.
    MissingArg(u8),
    /// `--text` matching no long option (`text` as typed, `=value`
    /// included).
    Unrecognized(Vec<u8>),
    /// `--name=value` for an option without argument.
    ArgNotAllowed(&'static str),
    /// `--name` that needs an argument came last.
    LongMissingArg(&'static str),
    /// `--text` is a prefix of several long options.
    Ambiguous(Vec<u8>, Vec<&'static str>),
}

impl GetoptError {
    /// The diagnostic line (without newline) for program name `argv0`.
    pub fn message(&self, argv0: &[u8]) -> Vec<u8> {
        let mut m = argv0.to_vec();
        let quote = |m: &mut Vec<u8>, pre: &str, b: &[u8], post: &str| {
            m.extend_from_slice(pre.as_bytes());
            m.extend_from_slice(b);
            m.extend_from_slice(post.as_bytes());
        };
        match self {
            GetoptError::Invalid(c) => quote(&mut m, ": invalid option -- '", &[*c], "'"),
            GetoptError::MissingArg(c) => {
                quote(&mut m, ": option requires an argument -- '", &[*c], "'")
            }
            GetoptError::Unrecognized(t) => quote(&mut m, ": unrecognized option '--", t, "'"),
            GetoptError::ArgNotAllowed(n) => quote(
                &mut m,
                ": option '--",
                n.as_bytes(),
                "' doesn't allow an argument",
            ),
            GetoptError::LongMissingArg(n) => quote(
                &mut m,
                ": option '--",
                n.as_bytes(),
                "' requires an argument",
            ),
            GetoptError::Ambiguous(t, names) => {
                quote(&mut m, ": option '--", t, "' is ambiguous; possibilities:");
                for n in names {
                    quote(&mut m, " '--", n.as_bytes(), "'");
                }
            }
        }
        m
    }
}

/// A parsed option: its letter and its argument, if it takes one.
pub type Parsed = (u8, Option<Vec<u8>>);

/// The parser state over `args[start..]`.
pub struct Getopt<'a> {
    args: &'a [Vec<u8>],
    specs: &'a [OptSpec],
    /// Next argument to examine.
    next: usize,
    /// Position inside a cluster of short options: (argument, byte).
    cluster: Option<(usize, usize)>,
    /// Operands in the order getopt's permutation leaves them.
    operands: Vec<Vec<u8>>,
    /// REQUIRE_ORDER (POSIXLY_CORRECT): stop at the first operand.
    posix: bool,
    done: bool,
}

impl<'a> Getopt<'a> {
    /// Parses `args[start..]` against `specs`; `posix` selects
    /// POSIXLY_CORRECT behaviour.
    pub fn new(args: &'a [Vec<u8>], start: usize, specs: &'a [OptSpec], posix: bool) -> Self {
        Getopt {
            args,
            specs,
            next: start.min(args.len()),
            cluster: None,
            operands: Vec::new(),
            posix,
            done: false,
        }
    }

    /// The operands, once the iterator has returned `None`.
    pub fn into_operands(self) -> Vec<Vec<u8>> {
        self.operands
    }

    fn finish(&mut self, from: usize) {
        self.operands.extend(self.args[from..].iter().cloned());
        self.next = self.args.len();
        self.done = true;
    }

    fn short(&mut self, ai: usize, bi: usize) -> Result<Parsed, GetoptError> {
        let arg = &self.args[ai];
        let c = arg[bi];
        let rest_start = bi + 1;
        self.cluster = (rest_start < arg.len()).then_some((ai, rest_start));
        if ai >= self.next {
            self.next = ai + 1;
        }
        let Some(spec) = self.specs.iter().find(|s| s.short == c) else {
            return Err(GetoptError::Invalid(c));
        };
        if !spec.has_arg {
            return Ok((c, None));
        }
        if rest_start < arg.len() {
            self.cluster = None;
            return Ok((c, Some(arg[rest_start..].to_vec())));
        }
        if self.next < self.args.len() {
            let v = self.args[self.next].clone();
            self.next += 1;
            Ok((c, Some(v)))
        } else {
            Err(GetoptError::MissingArg(c))
        }
    }

    fn long(&mut self, text: &[u8]) -> Result<Parsed, GetoptError> {
        let name_len = text.iter().position(|&c| c == b'=').unwrap_or(text.len());
        let name = &text[..name_len];
        let exact = self.specs.iter().find(|s| s.long.as_bytes() == name);
        let spec = match exact {
            Some(s) => *s,
            None => {
                let cands: Vec<&OptSpec> = self
                    .specs
                    .iter()
                    .filter(|s| s.long.as_bytes().starts_with(name))
                    .collect();
                match cands.as_slice() {
                    [] => return Err(GetoptError::Unrecognized(text.to_vec())),
                    [one] => **one,
                    many => {
                        // glibc treats identical duplicates as one; dog's
                        // sets never have two options with the same letter.
                        let first = many[0];
                        if many
                            .iter()
                            .all(|s| s.short == first.short && s.has_arg == first.has_arg)
                        {
                            *first
                        } else {
                            return Err(GetoptError::Ambiguous(
                                text.to_vec(),
                                many.iter().map(|s| s.long).collect(),
                            ));
                        }
                    }
                }
            }
        };
        if name_len < text.len() {
            if spec.has_arg {
                return Ok((spec.short, Some(text[name_len + 1..].to_vec())));
            }
            return Err(GetoptError::ArgNotAllowed(spec.long));
        }
        if !spec.has_arg {
            return Ok((spec.short, None));
        }
        if self.next < self.args.len() {
            let v = self.args[self.next].clone();
            self.next += 1;
            Ok((spec.short, Some(v)))
        } else {
            Err(GetoptError::LongMissingArg(spec.long))
        }
    }
}

impl Iterator for Getopt<'_> {
    type Item = Result<Parsed, GetoptError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some((ai, bi)) = self.cluster.take() {
            return Some(self.short(ai, bi));
        }
        while !self.done {
            let Some(arg) = self.args.get(self.next) else {
                self.done = true;
                break;
            };
            let ai = self.next;
            if arg.as_slice() == b"--" {
                self.finish(ai + 1);
                break;
            }
            if arg.len() < 2 || arg[0] != b'-' {
                if self.posix {
                    self.finish(ai);
                    break;
                }
                self.operands.push(arg.clone());
                self.next += 1;
                continue;
            }
            if arg[1] == b'-' {
                self.next += 1;
                let text = arg[2..].to_vec();
                return Some(self.long(&text));
            }
            return Some(self.short(ai, 1));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SPECS: &[OptSpec] = &[
        OptSpec {
            short: b'a',
            long: "address",
            has_arg: true,
        },
        OptSpec {
            short: b'p',
            long: "port",
            has_arg: true,
        },
        OptSpec {
            short: b'P',
            long: "prealloc",
            has_arg: false,
        },
        OptSpec {
            short: b'r',
            long: "raw",
            has_arg: false,
        },
        OptSpec {
            short: b'v',
            long: "verbose",
            has_arg: false,
        },
    ];

    fn argv(s: &[&str]) -> Vec<Vec<u8>> {
        s.iter().map(|a| a.as_bytes().to_vec()).collect()
    }

    fn parse(s: &[&str]) -> (Vec<Result<Parsed, GetoptError>>, Vec<Vec<u8>>) {
        let args = argv(s);
        let mut g = Getopt::new(&args, 3, SPECS, false);
        let mut items = Vec::new();
        for it in g.by_ref() {
            let stop = it.is_err();
            items.push(it);
            if stop {
                break;
            }
        }
        (items, g.into_operands())
    }

    fn ok(c: u8, a: Option<&str>) -> Result<Parsed, GetoptError> {
        Ok((c, a.map(|a| a.as_bytes().to_vec())))
    }

    #[test]
    fn permutation_and_clusters() {
        let (items, ops) = parse(&["dog", "vdi", "create", "test", "4M", "-Prv", "-p7000", "x"]);
        assert_eq!(
            items,
            [
                ok(b'P', None),
                ok(b'r', None),
                ok(b'v', None),
                ok(b'p', Some("7000"))
            ]
        );
        assert_eq!(ops, argv(&["test", "4M", "x"]));
    }

    #[test]
    fn separate_argument_and_double_dash() {
        let (items, ops) = parse(&["dog", "a", "b", "-p", "-r", "x", "--", "-v", "--raw"]);
        assert_eq!(items, [ok(b'p', Some("-r"))]);
        assert_eq!(ops, argv(&["x", "-v", "--raw"]));
    }

    #[test]
    fn long_forms() {
        let (items, _) = parse(&["dog", "a", "b", "--po", "7101", "--address=h", "--raw"]);
        assert_eq!(
            items,
            [ok(b'p', Some("7101")), ok(b'a', Some("h")), ok(b'r', None)]
        );
        let (items, _) = parse(&["dog", "a", "b", "--p"]);
        assert_eq!(
            items,
            [Err(GetoptError::Ambiguous(
                b"p".to_vec(),
                vec!["port", "prealloc"]
            ))]
        );
    }

    #[test]
    fn messages_are_glibcs() {
        let m = |e: GetoptError| String::from_utf8(e.message(b"dog")).unwrap();
        let (items, _) = parse(&["dog", "a", "b", "-x"]);
        assert_eq!(
            m(items[0].clone().unwrap_err()),
            "dog: invalid option -- 'x'"
        );
        let (items, _) = parse(&["dog", "a", "b", "-1"]);
        assert_eq!(
            m(items[0].clone().unwrap_err()),
            "dog: invalid option -- '1'"
        );
        let (items, _) = parse(&["dog", "a", "b", "-rp"]);
        assert_eq!(items[0], ok(b'r', None));
        assert_eq!(
            m(items[1].clone().unwrap_err()),
            "dog: option requires an argument -- 'p'"
        );
        let (items, _) = parse(&["dog", "a", "b", "--foo=1"]);
        assert_eq!(
            m(items[0].clone().unwrap_err()),
            "dog: unrecognized option '--foo=1'"
        );
        let (items, _) = parse(&["dog", "a", "b", "--raw=1"]);
        assert_eq!(
            m(items[0].clone().unwrap_err()),
            "dog: option '--raw' doesn't allow an argument"
        );
        let (items, _) = parse(&["dog", "a", "b", "--port"]);
        assert_eq!(
            m(items[0].clone().unwrap_err()),
            "dog: option '--port' requires an argument"
        );
        let (items, _) = parse(&["dog", "a", "b", "--p=3"]);
        assert_eq!(
            m(items[0].clone().unwrap_err()),
            "dog: option '--p=3' is ambiguous; possibilities: '--port' '--prealloc'"
        );
    }

    #[test]
    fn lone_dash_is_an_operand_and_posix_stops() {
        let (items, ops) = parse(&["dog", "a", "b", "-", "-r"]);
        assert_eq!(items, [ok(b'r', None)]);
        assert_eq!(ops, argv(&["-"]));
        let args = argv(&["dog", "a", "b", "x", "-r"]);
        let mut g = Getopt::new(&args, 3, SPECS, true);
        assert!(g.next().is_none());
        assert_eq!(g.into_operands(), argv(&["x", "-r"]));
    }

    proptest! {
        /// Any argv parses without panicking, and when it parses fully,
        /// every argument ends up as an option, an option argument or an
        /// operand (operands keep their relative order).
        #[test]
        fn never_panics(args in proptest::collection::vec(
            proptest::collection::vec(prop_oneof![Just(b'-'), Just(b'='), Just(b'p'), Just(b'r'), Just(b'a'), any::<u8>()], 0..6), 0..10),
            start in 0usize..5, posix in any::<bool>())
        {
            let mut g = Getopt::new(&args, start, SPECS, posix);
            let mut errs = 0;
            for it in g.by_ref() {
                if it.is_err() {
                    errs += 1;
                    if errs > 20 { break; }
                }
            }
            let ops = g.into_operands();
            let given: Vec<&Vec<u8>> = args.iter().skip(start).collect();
            prop_assert!(ops.len() <= given.len());
            let mut it = given.iter();
            for o in &ops {
                prop_assert!(it.any(|g| *g == o));
            }
        }
    }
}
