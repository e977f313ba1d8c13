//! The page's stylesheet and script, embedded in the binary (no CDN, no external font), served
//! at `/ui/style.css` and `/ui/app.js`.

/// Colours for states and health, a layout that reads on a phone, dark mode.
pub const STYLE: &str = include_str!("assets/style.css");
/// Live updates: fetches the page again every few seconds and swaps in its content.
pub const SCRIPT: &str = include_str!("assets/app.js");

/// The Content-Security-Policy of every page: only this origin's stylesheet and script, no
/// inline script or style, no frames, no form posts. An injected tag would not run even if one
/// got past the escaping.
pub const CSP: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
