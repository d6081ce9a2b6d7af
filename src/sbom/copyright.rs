//! Licences from `/usr/share/doc/PKG/copyright`, when the file is in
//! Debian's machine-readable format (DEP-5). Debian's short names are
//! mapped to SPDX identifiers where one exists; any other name becomes a
//! `LicenseRef-…` that the SPDX writer declares. A file in free form gives
//! no licence (NOASSERTION): guessing from prose would be a claim we
//! cannot back.

use std::collections::BTreeSet;

/// The licences a DEP-5 copyright file names, each as an SPDX identifier
/// or `LicenseRef-…`, sorted; `None` if the file is not DEP-5 or names none.
pub fn licences(copyright: &str) -> Option<BTreeSet<String>> {
    let first = copyright.lines().next()?;
    let dep5 = ["Format:", "Format-Specification:"]
        .iter()
        .any(|k| first.starts_with(k))
        && first.contains("copyright-format");
    if !dep5 {
        return None;
    }
    let mut out = BTreeSet::new();
    for para in copyright.split("\n\n") {
        // Only the licences that Files paragraphs apply; stand-alone
        // License paragraphs hold texts for them.
        if !para.lines().any(|l| l.starts_with("Files:")) {
            continue;
        }
        let Some(expr) = para
            .lines()
            .find_map(|l| l.strip_prefix("License:"))
            .map(str::trim)
        else {
            continue;
        };
        for name in split_expression(expr) {
            out.insert(spdx_id(&name));
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The names in a Debian licence expression (`GPL-2+ or Artistic`,
/// `MIT and BSD-3-clause`, `GPL-2+ with OpenSSL exception`).
fn split_expression(expr: &str) -> Vec<String> {
    let mut names = vec![];
    let mut current: Vec<&str> = vec![];
    for word in expr.split_whitespace() {
        if matches!(word.to_ascii_lowercase().as_str(), "or" | "and" | "|" | ",") {
            if !current.is_empty() {
                names.push(current.join(" "));
                current.clear();
            }
        } else {
            current.push(word.trim_end_matches(','));
        }
    }
    if !current.is_empty() {
        names.push(current.join(" "));
    }
    names
}

/// Debian short name → SPDX identifier, else a `LicenseRef-` of the name.
pub fn spdx_id(name: &str) -> String {
    let known: &[(&str, &str)] = &[
        ("GPL-1", "GPL-1.0-only"),
        ("GPL-1+", "GPL-1.0-or-later"),
        ("GPL-2", "GPL-2.0-only"),
        ("GPL-2+", "GPL-2.0-or-later"),
        ("GPL-3", "GPL-3.0-only"),
        ("GPL-3+", "GPL-3.0-or-later"),
        ("LGPL-2", "LGPL-2.0-only"),
        ("LGPL-2+", "LGPL-2.0-or-later"),
        ("LGPL-2.1", "LGPL-2.1-only"),
        ("LGPL-2.1+", "LGPL-2.1-or-later"),
        ("LGPL-3", "LGPL-3.0-only"),
        ("LGPL-3+", "LGPL-3.0-or-later"),
        ("AGPL-3", "AGPL-3.0-only"),
        ("AGPL-3+", "AGPL-3.0-or-later"),
        ("GFDL-1.2+", "GFDL-1.2-or-later"),
        ("GFDL-1.3+", "GFDL-1.3-or-later"),
        ("Expat", "MIT"),
        ("MIT", "MIT"),
        ("BSD-2-clause", "BSD-2-Clause"),
        ("BSD-3-clause", "BSD-3-Clause"),
        ("BSD-4-clause", "BSD-4-Clause"),
        ("ISC", "ISC"),
        ("Zlib", "Zlib"),
        ("Apache-2.0", "Apache-2.0"),
        ("Apache-2", "Apache-2.0"),
        ("Artistic", "Artistic-1.0-Perl"),
        ("Artistic-2.0", "Artistic-2.0"),
        ("MPL-1.1", "MPL-1.1"),
        ("MPL-2.0", "MPL-2.0"),
        ("CC0-1.0", "CC0-1.0"),
        ("PSF-2", "Python-2.0"),
        ("OpenSSL", "OpenSSL"),
        ("Unicode-DFS-2016", "Unicode-DFS-2016"),
        ("X11", "X11"),
        ("BSL-1.0", "BSL-1.0"),
        ("curl", "curl"),
        ("FSFAP", "FSFAP"),
        ("FSFUL", "FSFUL"),
        ("FSFULLR", "FSFULLR"),
        ("Sleepycat", "Sleepycat"),
        ("Beerware", "Beerware"),
    ];
    let trimmed = name.trim();
    if let Some((_, id)) = known.iter().find(|(k, _)| k.eq_ignore_ascii_case(trimmed)) {
        return id.to_string();
    }
    let clean: String = trimmed
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("LicenseRef-{}", clean.trim_matches('-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP5: &str =
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
Upstream-Name: openssh\n\n\
Files: *\nCopyright: 1995 Tatu Ylonen\nLicense: BSD-2-clause\n\n\
Files: scp.c\nCopyright: 1999 Theo de Raadt\nLicense: BSD-3-clause or GPL-2+\n\n\
Files: sshbuf.c\nCopyright: someone\nLicense: Beer-ware with exception\n\n\
License: BSD-2-clause\n Redistribution and use...\n";

    #[test]
    fn dep5_licences_are_mapped_to_spdx_ids() {
        let l = licences(DEP5).unwrap();
        let l: Vec<&str> = l.iter().map(String::as_str).collect();
        assert_eq!(
            l,
            [
                "BSD-2-Clause",
                "BSD-3-Clause",
                "GPL-2.0-or-later",
                "LicenseRef-Beer-ware-with-exception"
            ]
        );
    }

    #[test]
    fn free_form_copyright_gives_no_licence() {
        assert_eq!(
            licences("This is Debian's prepackaged bash.\n\nGPL-3+\n"),
            None
        );
        assert_eq!(licences(""), None);
    }
}
