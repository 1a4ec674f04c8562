//! Options with a fixed set of names (modes, GAN losses, initialisations, layouts, …): each
//! is an enum declared once with [`choice_enum!`], which gives it its names, parsing with an
//! error that lists the allowed values, `Display` and serde as the name. The Python layer
//! reads the same lists from `qs_attn._native.OPTION_CHOICES`.
use tch::TchError;

use crate::error::invalid;

/// An option whose value is one of a fixed list of names.
pub trait Choice: Sized + Copy + 'static {
    /// The option's name in messages (e.g. `gan_mode`).
    const OPTION: &'static str;
    /// Every value, in the order the names are listed.
    const ALL: &'static [Self];
    fn name(self) -> &'static str;

    fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|c| c.name()).collect()
    }

    /// The value called `s`, or an error naming the option and the allowed values.
    fn parse_name(s: &str) -> Result<Self, TchError> {
        Self::ALL
            .iter()
            .copied()
            .find(|c| c.name() == s)
            .ok_or_else(|| invalid(format!("{} must be {}, got '{s}'", Self::OPTION, alternatives(&Self::names()))))
    }
}

/// `'a' or 'b'`, `'a', 'b' or 'c'`.
pub fn alternatives(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        Some((last, _)) => last.clone(),
        None => String::new(),
    }
}

/// Declares an enum of named values: `choice_enum! { pub enum GanMode("gan_mode") { Lsgan =
/// "lsgan", … } }`.
#[macro_export]
macro_rules! choice_enum {
    ($(#[$meta:meta])* $vis:vis enum $name:ident ($option:literal) { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $crate::choices::Choice for $name {
            const OPTION: &'static str = $option;
            const ALL: &'static [Self] = &[$($name::$variant),+];
            fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl $name {
            /// The value's name (as written in options and checkpoints).
            pub fn as_str(self) -> &'static str {
                $crate::choices::Choice::name(self)
            }
        }

        impl std::str::FromStr for $name {
            type Err = tch::TchError;
            fn from_str(s: &str) -> Result<Self, tch::TchError> {
                <Self as $crate::choices::Choice>::parse_name(s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        $crate::serde_as_text!($name);
    };
}

/// Serde for a type written as text: serialised with `Display`, read with `FromStr` (whose
/// error becomes the message).
#[macro_export]
macro_rules! serde_as_text {
    ($name:ty) => {
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(|e: tch::TchError| <D::Error as serde::de::Error>::custom($crate::error::message(&e)))
            }
        }
    };
}
