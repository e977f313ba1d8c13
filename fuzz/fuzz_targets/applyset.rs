//! The ApplySet annotation decoder (`Inventory::from_annotations`) over arbitrary annotation
//! values: the input as a JSON value (any shape), and split at its first NUL byte into the
//! `contains-group-kinds` and `additional-namespaces` strings. Must never panic, and what it
//! decodes must survive being written back (`annotations()`) and read again.
#![no_main]

use driftless::keys;
use driftless::manifest::GroupKind;
use driftless::inventory::applyset::Inventory;
use libfuzzer_sys::fuzz_target;

fn round_trip(inventory: &Inventory) {
    let written = inventory.annotations();
    let again = Inventory::from_annotations(&written);
    // Once written, an inventory reads back the same, and writing it again changes nothing.
    let rewritten = again.annotations();
    assert_eq!(Inventory::from_annotations(&rewritten), again, "written as {rewritten}");
    assert_eq!(again.namespaces, inventory.namespaces, "written as {written}");
    // Well-formed entries (`Kind` or `Kind.group`) survive the first write too. Others may not:
    // `.` or `Kind .` decode to a kind that is empty or ends in blanks, written as `` or `Kind `
    // and so read back trimmed or dropped (harmless: the server serves no such kind, and listing
    // skips what it does not serve).
    let well_formed = |gk: &GroupKind| {
        !gk.kind.is_empty()
            && gk.kind.bytes().all(|b| b.is_ascii_alphanumeric())
            && gk.group.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    };
    if inventory.group_kinds.iter().all(well_formed) {
        assert_eq!(&again, inventory, "written as {written}");
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        round_trip(&Inventory::from_annotations(&value));
    }
    let text = String::from_utf8_lossy(data);
    let (group_kinds, namespaces) = text.split_once('\0').unwrap_or((&text, ""));
    let annotations = serde_json::json!({
        keys::APPLYSET_GROUP_KINDS: group_kinds,
        keys::APPLYSET_NAMESPACES: namespaces,
    });
    round_trip(&Inventory::from_annotations(&annotations));
});
