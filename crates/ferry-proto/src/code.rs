//! Code phrases: `<nameplate>-<word>-<word>`, e.g. `7-orbit-lantern`.
//!
//! The nameplate tells the rendezvous server which mailbox to join; the
//! whole phrase is the SPAKE2 password. Two words from a list of 256 give
//! 65 536 combinations, and a wrong guess burns the nameplate, so a guesser
//! has one chance in 65 536.

use std::fmt;
use std::str::FromStr;

use rand::Rng;

/// How many words [`Code::generate`] picks.
pub const CODE_WORDS: usize = 2;

/// A parsed or generated code phrase.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Code {
    /// The nameplate number the rendezvous server allocated.
    pub nameplate: u32,
    /// The secret words, lowercase, each from [`WORDS`].
    pub words: Vec<String>,
}

/// Errors from parsing a code phrase.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodeError {
    /// The phrase was empty.
    #[error("the code is empty; it looks like 7-orbit-lantern")]
    Empty,
    /// The part before the first dash is not a positive number.
    #[error("the code must start with a number, e.g. 7-orbit-lantern; got {text:?}")]
    BadNameplate {
        /// What stood where the number should be.
        text: String,
    },
    /// Not the expected number of words after the nameplate.
    #[error("the code needs {expected} words after the number, e.g. 7-orbit-lantern; got {found}")]
    WrongWordCount {
        /// Words found.
        found: usize,
        /// Words expected.
        expected: usize,
    },
    /// A word is not in the word list.
    #[error("{}", unknown_word_message(.word, .suggestion.as_deref()))]
    UnknownWord {
        /// The word as typed (lowercased).
        word: String,
        /// A close word from the list, if there is one.
        suggestion: Option<String>,
    },
}

impl Code {
    /// Picks [`CODE_WORDS`] words from [`WORDS`] with `rng`.
    ///
    /// Pass a cryptographically secure rng (e.g. `rand::rngs::OsRng`): the
    /// words are the secret.
    pub fn generate<R: Rng>(nameplate: u32, rng: &mut R) -> Code {
        let words = (0..CODE_WORDS)
            .map(|_| WORDS[rng.gen_range(0..WORDS.len())].to_string())
            .collect();
        Code { nameplate, words }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.nameplate)?;
        for word in &self.words {
            write!(f, "-{word}")?;
        }
        Ok(())
    }
}

impl FromStr for Code {
    type Err = CodeError;

    /// Parses `7-orbit-lantern`, ignoring surrounding whitespace and case;
    /// spaces work as separators too (`7 orbit lantern`).
    fn from_str(s: &str) -> Result<Code, CodeError> {
        let lower = s.trim().to_lowercase();
        let mut parts = lower
            .split(|c: char| c == '-' || c.is_whitespace())
            .filter(|p| !p.is_empty());
        let first = parts.next().ok_or(CodeError::Empty)?;
        let nameplate = match first.parse::<u32>() {
            Ok(n) if n > 0 && first.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => {
                return Err(CodeError::BadNameplate {
                    text: first.to_string(),
                });
            }
        };
        let words: Vec<String> = parts.map(str::to_string).collect();
        if words.len() != CODE_WORDS {
            return Err(CodeError::WrongWordCount {
                found: words.len(),
                expected: CODE_WORDS,
            });
        }
        for word in &words {
            if !WORDS.contains(&word.as_str()) {
                return Err(CodeError::UnknownWord {
                    word: word.clone(),
                    suggestion: closest_word(word).map(str::to_string),
                });
            }
        }
        Ok(Code { nameplate, words })
    }
}

/// The word list: 256 distinct lowercase words of 4 to 8 letters; no word is
/// a prefix of another and no two differ by a single edit, so one typo never
/// turns a word into another valid word.
pub const WORDS: [&str; 256] = [
    "acorn", "actor", "adobe", "agent", "album", "amber", "anchor", "angle", "apple", "apron",
    "arena", "armor", "arrow", "atlas", "attic", "autumn", "badge", "bagel", "bakery", "bamboo",
    "banjo", "barrel", "basil", "basket", "beacon", "beaver", "berry", "bicycle", "bison",
    "blanket", "blossom", "bonnet", "border", "bottle", "bracket", "breeze", "brick", "bridge",
    "bronze", "brook", "bucket", "buffalo", "bugle", "bundle", "butter", "button", "cabin",
    "cactus", "camel", "canal", "candle", "canoe", "canyon", "carpet", "carrot", "castle", "cedar",
    "cello", "chalk", "cherry", "chimney", "cider", "circus", "citrus", "clover", "cobalt",
    "cocoa", "comet", "copper", "coral", "cotton", "cradle", "crane", "crayon", "cricket",
    "crystal", "cupcake", "curtain", "dahlia", "daisy", "denim", "desert", "diamond", "dolphin",
    "domino", "dragon", "drum", "eagle", "easel", "echo", "elbow", "engine", "falcon", "feather",
    "fiddle", "forest", "fossil", "fountain", "galaxy", "garden", "garlic", "gazelle", "ginger",
    "giraffe", "glacier", "globe", "goblet", "gopher", "granite", "grape", "gravel", "guitar",
    "hammock", "harbor", "harvest", "hazel", "helmet", "heron", "hickory", "honey", "horizon",
    "iceberg", "igloo", "island", "ivory", "jacket", "jaguar", "jasmine", "jelly", "jewel",
    "jigsaw", "jungle", "kayak", "kettle", "kitten", "koala", "ladder", "lagoon", "lantern",
    "laurel", "lemon", "lemur", "llama", "lobster", "lotus", "magnet", "mango", "maple", "marble",
    "meadow", "melon", "meteor", "monkey", "mosaic", "muffin", "mustard", "napkin", "nectar",
    "needle", "nickel", "noodle", "nugget", "nutmeg", "oasis", "ocean", "olive", "onion", "orange",
    "orbit", "orchid", "otter", "oyster", "paddle", "pancake", "panda", "papaya", "pasta",
    "peanut", "pebble", "pelican", "pepper", "piano", "pickle", "pigeon", "pillow", "pilot",
    "pine", "plum", "pollen", "pony", "poppy", "potato", "prairie", "pumpkin", "puzzle", "quartz",
    "quilt", "quiver", "rabbit", "raccoon", "radish", "rainbow", "raven", "ribbon", "river",
    "robin", "rocket", "salmon", "sandal", "satin", "shadow", "shell", "silver", "sketch",
    "sleigh", "sparrow", "spider", "spoon", "squash", "stable", "summit", "sunset", "swan",
    "teapot", "temple", "thistle", "thunder", "tiger", "timber", "toast", "tomato", "tractor",
    "trumpet", "tulip", "tundra", "tunnel", "turtle", "umbrella", "unicorn", "valley", "vanilla",
    "velvet", "violin", "volcano", "waffle", "wagon", "walnut", "walrus", "whale", "window",
    "winter", "wizard", "yogurt", "zebra", "zenith", "zipper",
];

fn unknown_word_message(word: &str, suggestion: Option<&str>) -> String {
    match suggestion {
        Some(s) => format!("{word:?} is not a code word; did you mean {s:?}?"),
        None => format!("{word:?} is not a code word; check the code for typos"),
    }
}

/// The word within two edits of `word`, preferring the closest.
fn closest_word(word: &str) -> Option<&'static str> {
    WORDS
        .iter()
        .map(|w| (edit_distance(word, w), *w))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, w)| w)
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use std::collections::HashSet;

    #[test]
    fn word_list_is_sound() {
        let set: HashSet<&str> = WORDS.iter().copied().collect();
        assert_eq!(set.len(), 256, "words must be distinct");
        for w in WORDS {
            assert!((4..=8).contains(&w.len()), "{w} has a bad length");
            assert!(w.bytes().all(|b| b.is_ascii_lowercase()), "{w}");
            for other in WORDS {
                if w != other {
                    assert!(!other.starts_with(w), "{w} is a prefix of {other}");
                    assert!(
                        edit_distance(w, other) >= 2,
                        "{w} and {other} are one typo apart"
                    );
                }
            }
        }
    }

    #[test]
    fn display_and_parse() {
        let code = Code {
            nameplate: 7,
            words: vec!["orbit".into(), "lantern".into()],
        };
        assert_eq!(code.to_string(), "7-orbit-lantern");
        assert_eq!("  7-Orbit-LANTERN\n".parse::<Code>().unwrap(), code);
        assert_eq!("7 orbit lantern".parse::<Code>().unwrap(), code);
    }

    #[test]
    fn parse_errors() {
        assert_eq!("".parse::<Code>(), Err(CodeError::Empty));
        assert_eq!("  - ".parse::<Code>(), Err(CodeError::Empty));
        assert!(matches!(
            "orbit-lantern".parse::<Code>(),
            Err(CodeError::BadNameplate { .. })
        ));
        assert!(matches!(
            "0-orbit-lantern".parse::<Code>(),
            Err(CodeError::BadNameplate { .. })
        ));
        assert!(matches!(
            "+7-orbit-lantern".parse::<Code>(),
            Err(CodeError::BadNameplate { .. })
        ));
        assert_eq!(
            "7-orbit".parse::<Code>(),
            Err(CodeError::WrongWordCount {
                found: 1,
                expected: 2
            })
        );
        assert_eq!(
            "7-orbit-lantern-river".parse::<Code>(),
            Err(CodeError::WrongWordCount {
                found: 3,
                expected: 2
            })
        );
        let err = "7-orbt-lantern".parse::<Code>().unwrap_err();
        assert_eq!(
            err,
            CodeError::UnknownWord {
                word: "orbt".into(),
                suggestion: Some("orbit".into())
            }
        );
        assert_eq!(
            err.to_string(),
            "\"orbt\" is not a code word; did you mean \"orbit\"?"
        );
        assert_eq!(
            "7-orbit-xyzzyq".parse::<Code>(),
            Err(CodeError::UnknownWord {
                word: "xyzzyq".into(),
                suggestion: None
            })
        );
    }

    #[test]
    fn generate_uses_the_word_list() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut seen = HashSet::new();
        for _ in 0..200 {
            let code = Code::generate(42, &mut rng);
            assert_eq!(code.words.len(), CODE_WORDS);
            assert_eq!(code.to_string().parse::<Code>().unwrap(), code);
            seen.insert(code.to_string());
        }
        assert!(seen.len() > 190, "codes should rarely repeat");
    }

    proptest! {
        #[test]
        fn roundtrip(nameplate in 1u32.., a in 0usize..256, b in 0usize..256) {
            let code = Code { nameplate, words: vec![WORDS[a].into(), WORDS[b].into()] };
            prop_assert_eq!(code.to_string().parse::<Code>().unwrap(), code);
        }

        #[test]
        fn parse_never_panics(s in ".*") {
            let _ = s.parse::<Code>();
        }
    }
}
