//! The operator's console at `/_epi/ui`: a page that shows the plugins, services, provider
//! counters and latency, processes, data and reload history, refreshed every second, with
//! reload buttons.
//!
//! The page (`page`) is static; the panels (`panels`) are HTML rendered on the server from
//! the registry at each refresh, at `/_epi/ui/panels`, an admin route like the JSON ones.
//! The buttons post to `/_epi/reload`, so the console can do nothing the admin routes'
//! guard would refuse to a caller without the token, Host and Origin it checks.

mod graph;
pub mod page;
pub mod panels;
pub mod window;

use std::time::Duration;

use epi::Registry;
use maud::Markup;

use self::window::LatencyWindow;

/// How far back the console's latency quantiles look.
pub const LATENCY_WINDOW: Duration = Duration::from_secs(60);

/// What the console keeps between refreshes.
pub struct Console {
    window: LatencyWindow,
}

impl Default for Console {
    fn default() -> Self {
        Console {
            window: LatencyWindow::new(LATENCY_WINDOW),
        }
    }
}

impl Console {
    /// The page.
    pub fn page(&self) -> Markup {
        page::render()
    }

    /// The panels, now.
    pub fn panels(&self, registry: &Registry) -> Markup {
        panels::render(registry, &self.window)
    }
}
