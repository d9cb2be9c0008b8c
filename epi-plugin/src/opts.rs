//! The options of each verb. A typed call takes the options of its verb only, so a combination
//! that cannot work (`concurrent` on a `decide`, `pipe` on an `apply`) does not compile.
//! [`Opts`] is couch_epi's option list for calls by name, whose options arrive as data (JSON
//! over HTTP, the CLI): there `pipe` chooses the verb and a bad combination is refused at run
//! time.
//!
//! ```compile_fail
//! // A decide asks providers one at a time: it has no `concurrent`.
//! let _ = epi_plugin::DecideOpts::new().concurrent();
//! ```
//!
//! ```compile_fail
//! // A pipe runs providers one after another.
//! let _ = epi_plugin::PipeOpts::new().concurrent();
//! ```
//!
//! ```compile_fail
//! // `pipe` is a verb of its own, not an option of `apply`.
//! let _ = epi_plugin::ApplyOpts::new().pipe();
//! ```
//!
//! ```
//! // What each verb does have.
//! let _ = epi_plugin::ApplyOpts::new().ignore_errors().concurrent();
//! let _ = epi_plugin::DecideOpts::new().ignore_errors();
//! let _ = epi_plugin::PipeOpts::new().ignore_errors();
//! ```

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// `pub const fn NAME(self) -> Self` for each named `bool` field: sets it.
macro_rules! setters {
    ($($field:ident),+) => {
        $(
            #[doc = concat!("Sets `", stringify!($field), "`.")]
            pub const fn $field(mut self) -> Self {
                self.$field = true;
                self
            }
        )+
    };
}

/// Options of `apply`, `apply_answers`, `any` and `all`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyOpts {
    /// Call every provider: a failure becomes that provider's result instead of ending the
    /// call (`any`/`all`: counts as neither `true` nor `false`).
    pub ignore_errors: bool,
    /// Run providers in parallel on the host's bounded pool; results stay in provider order.
    pub concurrent: bool,
}

impl ApplyOpts {
    /// No option set: providers in order, the first error stops the call.
    pub const fn new() -> Self {
        ApplyOpts {
            ignore_errors: false,
            concurrent: false,
        }
    }

    setters!(ignore_errors, concurrent);
}

/// Options of `decide`, which asks providers one at a time and stops at the first decision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecideOpts {
    /// A provider that fails counts as no decision; the next one is asked.
    pub ignore_errors: bool,
}

impl DecideOpts {
    /// No option set: the first error stops the call.
    pub const fn new() -> Self {
        DecideOpts {
            ignore_errors: false,
        }
    }

    setters!(ignore_errors);
}

/// Options of `pipe`, which passes a value through providers one after another.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PipeOpts {
    /// A provider that fails is skipped: the value passes on unchanged.
    pub ignore_errors: bool,
}

impl PipeOpts {
    /// No option set: the first error stops the call.
    pub const fn new() -> Self {
        PipeOpts {
            ignore_errors: false,
        }
    }

    setters!(ignore_errors);
}

/// couch_epi's options for a call by name, as they arrive as data (`apply_json`,
/// `decide_json`, the daemon's HTTP and CLI): `pipe` turns an apply into a pipe, and
/// combinations that cannot work are refused when the call is made. Typed calls take
/// [`ApplyOpts`], [`DecideOpts`] or [`PipeOpts`] instead.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Opts {
    /// See [`ApplyOpts::ignore_errors`], [`DecideOpts::ignore_errors`] and
    /// [`PipeOpts::ignore_errors`].
    pub ignore_errors: bool,
    /// See [`ApplyOpts::concurrent`]; refused with `pipe` and by `decide`.
    pub concurrent: bool,
    /// Feed each provider's output to the next as input; refused by `decide`.
    pub pipe: bool,
}

impl Opts {
    /// No option set.
    pub const fn new() -> Self {
        Opts {
            ignore_errors: false,
            concurrent: false,
            pipe: false,
        }
    }

    setters!(ignore_errors, concurrent, pipe);

    /// The options of an apply. `pipe` is not one of them: it chooses the verb (read it and
    /// call [`Opts::for_pipe`]).
    pub fn for_apply(self) -> Result<ApplyOpts, Error> {
        if self.pipe {
            return Err(Error::IncompatibleOptions(
                "`pipe` changes the result type: call `pipe` instead of `apply`",
            ));
        }
        Ok(ApplyOpts {
            ignore_errors: self.ignore_errors,
            concurrent: self.concurrent,
        })
    }

    /// The options of a pipe (`concurrent` refused).
    pub fn for_pipe(self) -> Result<PipeOpts, Error> {
        if self.concurrent {
            return Err(Error::IncompatibleOptions(
                "`concurrent` and `pipe` cannot be combined: a pipe runs providers one after another",
            ));
        }
        Ok(PipeOpts {
            ignore_errors: self.ignore_errors,
        })
    }

    /// The options of a decide (`concurrent` and `pipe` refused).
    pub fn for_decide(self) -> Result<DecideOpts, Error> {
        if self.concurrent || self.pipe {
            return Err(Error::IncompatibleOptions(
                "`decide` asks providers one at a time: `concurrent` and `pipe` do not apply",
            ));
        }
        Ok(DecideOpts {
            ignore_errors: self.ignore_errors,
        })
    }

    /// The options as bits, for the boundary: 1 ignore_errors, 2 concurrent, 4 pipe.
    pub const fn bits(self) -> u32 {
        self.ignore_errors as u32 | (self.concurrent as u32) << 1 | (self.pipe as u32) << 2
    }

    /// The options from [`Opts::bits`].
    pub const fn from_bits(bits: u32) -> Self {
        Opts {
            ignore_errors: bits & 1 != 0,
            concurrent: bits & 2 != 0,
            pipe: bits & 4 != 0,
        }
    }
}

impl From<ApplyOpts> for Opts {
    fn from(opts: ApplyOpts) -> Self {
        Opts {
            ignore_errors: opts.ignore_errors,
            concurrent: opts.concurrent,
            pipe: false,
        }
    }
}

impl From<DecideOpts> for Opts {
    fn from(opts: DecideOpts) -> Self {
        Opts {
            ignore_errors: opts.ignore_errors,
            ..Opts::new()
        }
    }
}

/// The options of a pipe by name: `pipe` set.
impl From<PipeOpts> for Opts {
    fn from(opts: PipeOpts) -> Self {
        Opts {
            ignore_errors: opts.ignore_errors,
            ..Opts::new().pipe()
        }
    }
}
