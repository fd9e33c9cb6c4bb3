//! `Key : Value` text, as `dsregcmd /status` prints it (`   AzureAdJoined : YES`) and as
//! the screens show their fields (`Profile: Contoso Entra Pre-provisioning`).
//! Keys are matched case-insensitively; values keep their case but lose outer spaces.

use std::collections::BTreeMap;

/// The `Key : Value` lines of `text`, keyed by lower-cased key. Lines without a colon,
/// with an empty key, or decorated as section headers (`| Device State |`, `+----+`) are
/// skipped. Only the first colon splits, so URLs and times in values stay whole. When a
/// key repeats, the first value wins (dsregcmd prints the device section first).
pub fn parse(text: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let key = key.trim();
        if key.is_empty() || key.starts_with(['|', '+', '-', '=']) {
            continue;
        }
        fields
            .entry(key.to_lowercase())
            .or_insert_with(|| value.trim().to_string());
    }
    fields
}

/// Looks a key up the way [`parse`] stored it.
pub fn get<'a>(fields: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    fields.get(&key.trim().to_lowercase()).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsregcmd_layout() {
        let out = "\
+----------------------------------------------------------------------+
| Device State                                                         |
+----------------------------------------------------------------------+

             AzureAdJoined : YES
          EnterpriseJoined : NO
              DomainJoined : NO
               Device Name : DESKTOP-1

+----------------------------------------------------------------------+
| Tenant Details                                                       |
+----------------------------------------------------------------------+

                    MdmUrl : https://enrollment.manage.microsoft.com/enrollmentserver/discovery.svc
";
        let f = parse(out);
        assert_eq!(get(&f, "AzureAdJoined"), Some("YES"));
        assert_eq!(get(&f, "domainjoined"), Some("NO"));
        assert_eq!(get(&f, "Device Name"), Some("DESKTOP-1"));
        assert_eq!(
            get(&f, "MdmUrl"),
            Some("https://enrollment.manage.microsoft.com/enrollmentserver/discovery.svc")
        );
        assert_eq!(get(&f, "Device State"), None);
    }

    #[test]
    fn screen_fields_case_insensitive() {
        let f = parse(
            "Windows Autopilot Configuration\nProfile: Contoso Entra\nORGANIZATION: Contoso Lab\nUser:\n",
        );
        assert_eq!(get(&f, "profile"), Some("Contoso Entra"));
        assert_eq!(get(&f, "Organization"), Some("Contoso Lab"));
        assert_eq!(get(&f, "user"), Some(""));
        assert_eq!(get(&f, "missing"), None);
    }
}
