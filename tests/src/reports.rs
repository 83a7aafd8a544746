//! Report validators shared by the tests that check `identityd audit`'s CI formats: JUnit read
//! by Python's junitparser, SARIF validated by Microsoft's SARIF multitool against the 2.1.0
//! schema. Both panic with the tool's output when the tool itself fails.

use std::path::Path;
use std::process::Command;

use crate::tools;

/// Every test case of a JUnit file as junitparser reads it: (`PASSED`, `FAILED` or `SKIPPED`,
/// the case name), in file order.
#[must_use]
pub fn junit_cases(file: &Path) -> Vec<(String, String)> {
    let py = "import sys\nfrom junitparser import JUnitXml, TestSuite, Failure, Skipped\n\
              x = JUnitXml.fromfile(sys.argv[1])\n\
              suites = [x] if isinstance(x, TestSuite) else list(x)\n\
              for suite in suites:\n    for case in suite:\n        \
              r = case.result\n        \
              print(('FAILED' if any(isinstance(i, Failure) for i in r) else 'SKIPPED' if any(isinstance(i, Skipped) for i in r) else 'PASSED'), case.name)\n";
    let out = Command::new(tools::python())
        .args(["-c", py])
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("python: {e}"));
    assert!(
        out.status.success(),
        "junitparser on {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(s, n)| (s.to_owned(), n.to_owned()))
        .collect()
}

/// Validates the SARIF log `file` with the multitool (schema 2.1.0 and its rules), writing its
/// findings to `report`, and returns them (a SARIF log itself).
#[must_use]
pub fn sarif_validation(file: &Path, report: &Path) -> serde_json::Value {
    let _ = std::fs::remove_file(report);
    let tool = tools::sarif_multitool();
    let out = Command::new(&tool)
        .arg("validate")
        .arg(file)
        .arg("--json-schema")
        .arg(tool.with_file_name("sarif-2.1.0.json"))
        .arg("--output")
        .arg(report)
        .env("DOTNET_SYSTEM_GLOBALIZATION_INVARIANT", "1")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", tool.display()));
    assert!(
        out.status.success(),
        "Sarif.Multitool validate: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text =
        std::fs::read_to_string(report).unwrap_or_else(|e| panic!("{}: {e}", report.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", report.display()))
}

/// The error-level findings of a multitool validation (empty: the log is valid).
#[must_use]
pub fn sarif_errors(validation: &serde_json::Value) -> Vec<serde_json::Value> {
    validation["runs"][0]["results"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter(|x| x["level"] == "error")
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}
