//! The `Tpm` capability over a TCTI with tss-esapi.
//!
//! tss-esapi is blocking, so each operation runs on tokio's blocking pool with its own
//! short-lived `Context`. A TPM (and swtpm especially, which serves one client at a
//! time and makes a second one hang) must see one client at a time: every operation on
//! a TCTI holds that TCTI's lock, shared by all handles in the process that name it.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use openssl::hash::MessageDigest;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::verify::X509VerifyFlags;
use openssl::x509::{X509, X509NameRef, X509StoreContext};
use tss_esapi::abstraction::{AsymmetricAlgorithmSelection, ak, ek, nv};
use tss_esapi::constants::PropertyTag;
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::algorithm::{
    AsymmetricAlgorithm, HashingAlgorithm, SignatureSchemeAlgorithm,
};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::structures::{
    AttestInfo, Data, PcrSelectionListBuilder, PcrSlot, Public, Signature, SignatureScheme,
};
use tss_esapi::traits::Marshall;
use tss_esapi::{Context, TctiNameConf};

use crate::device::{DeviceError, DeviceResult, EkCertificate, Tpm, TpmFacts};

/// NV indices of EK certificates (TCG EK Credential Profile), in the order we prefer
/// them: RSA 2048 is what Windows and most TPMs use; swtpm adds ECC P-384.
const EK_CERT_INDICES: [(u32, AsymmetricAlgorithmSelection); 4] = [
    (
        0x01c0_0002,
        AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
    ),
    (
        0x01c0_001c,
        AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa3072),
    ),
    (
        0x01c0_000a,
        AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
    ),
    (
        0x01c0_0016,
        AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP384),
    ),
];
/// PCRs covered by the quote: the firmware and boot measurements.
const QUOTED_PCRS: [PcrSlot; 8] = [
    PcrSlot::Slot0,
    PcrSlot::Slot1,
    PcrSlot::Slot2,
    PcrSlot::Slot3,
    PcrSlot::Slot4,
    PcrSlot::Slot5,
    PcrSlot::Slot6,
    PcrSlot::Slot7,
];

/// One lock per TCTI string in this process.
static TCTI_LOCKS: LazyLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> =
    LazyLock::new(Default::default);

/// A TPM reached through a TCTI, e.g. `swtpm:host=127.0.0.1,port=2321`.
pub struct TctiTpm {
    tcti: String,
    /// Budget for one operation, waiting for the lock included.
    timeout: Duration,
}

impl TctiTpm {
    pub fn new(tcti: impl Into<String>) -> Self {
        TctiTpm {
            tcti: tcti.into(),
            // Creating an RSA EK and AK on a hardware TPM takes tens of seconds.
            timeout: Duration::from_secs(120),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs `work` with a fresh `Context`, holding the TCTI's lock throughout.
    async fn with_context<T, F>(&self, what: &'static str, work: F) -> DeviceResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Context, &str) -> DeviceResult<T> + Send + 'static,
    {
        let lock = TCTI_LOCKS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(self.tcti.clone())
            .or_default()
            .clone();
        let tcti = self.tcti.clone();
        let run = async move {
            let guard = lock.lock_owned().await;
            tokio::task::spawn_blocking(move || {
                let _guard = guard;
                let mut context = open(&tcti)?;
                work(&mut context, &tcti)
            })
            .await
            .map_err(|e| DeviceError::harness(format!("TPM worker thread failed: {e}")))?
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok(result) => result,
            Err(_) => Err(DeviceError::timeout(format!(
                "TPM at {} did not finish {what} within {}",
                self.tcti,
                humantime::format_duration(self.timeout)
            ))
            .with_hint("another client may hold the TPM (swtpm serves one client at a time)")),
        }
    }
}

#[async_trait]
impl Tpm for TctiTpm {
    async fn facts(&self) -> DeviceResult<TpmFacts> {
        self.with_context("reading its properties", |context, tcti| {
            read_facts(context).map_err(|e| tpm_failed(tcti, "reading TPM properties", e))
        })
        .await
    }

    async fn ek_certificate(&self, ca_bundle: Option<&Path>) -> DeviceResult<EkCertificate> {
        // Read the bundle first: a bad path is a config error whatever the TPM says.
        let trusted = match ca_bundle {
            Some(path) => Some(read_bundle(path)?),
            None => None,
        };
        let der = self
            .with_context("reading the EK certificate", read_ek_certificate)
            .await?;
        let Some(der) = der else {
            return Ok(EkCertificate::Missing);
        };
        Ok(check_chain(&der, trusted.as_deref()))
    }

    async fn attest(&self) -> DeviceResult<()> {
        let mut nonce = [0u8; 32];
        openssl::rand::rand_bytes(&mut nonce)
            .map_err(|e| DeviceError::harness(format!("cannot make a nonce: {e}")))?;
        self.with_context("attestation", move |context, tcti| {
            quote_and_verify(context, tcti, &nonce)
        })
        .await
    }
}

fn open(tcti: &str) -> DeviceResult<Context> {
    let conf = TctiNameConf::from_str(tcti).map_err(|e| {
        DeviceError::config(format!("TCTI `{tcti}` is not valid: {e}"))
            .with_hint("use e.g. swtpm:host=127.0.0.1,port=2321 or device:/dev/tpmrm0")
    })?;
    Context::new(conf).map_err(|e| {
        DeviceError::infrastructure(format!("cannot open the TPM at {tcti}: {e} ({e:?})"))
            .with_hint(format!(
                "check that the TPM simulator/device answers at {tcti}"
            ))
    })
}

/// A TPM command failed: the device's TPM misbehaves (with the TSS code for the report).
fn tpm_failed(tcti: &str, step: &str, e: tss_esapi::Error) -> DeviceError {
    DeviceError::product(format!("{step} on the TPM at {tcti} failed: {e}"))
        .with_code(format!("{e:?}"))
}

fn read_facts(context: &mut Context) -> tss_esapi::Result<TpmFacts> {
    let mut property = |tag| context.get_tpm_property(tag).map(Option::unwrap_or_default);
    let family = property(PropertyTag::FamilyIndicator)?;
    let manufacturer = property(PropertyTag::Manufacturer)?;
    let firmware = property(PropertyTag::FirmwareVersion1)?;
    let vendor = tss_esapi::utils::get_tpm_vendor(context)?;
    Ok(TpmFacts {
        family: four_chars(family),
        manufacturer: four_chars(manufacturer),
        // FIRMWARE_VERSION_1 holds major.minor in its two halves (IFX 7.85 = 0x00070055).
        firmware: format!("{}.{}", firmware >> 16, firmware & 0xffff),
        vendor: vendor.trim().to_string(),
    })
}

/// A TPM property that packs up to four ASCII characters ("2.0\0", "IBM ").
fn four_chars(value: u32) -> String {
    value
        .to_be_bytes()
        .iter()
        .filter(|b| b.is_ascii_graphic() || **b == b' ')
        .map(|b| char::from(*b))
        .collect::<String>()
        .trim()
        .to_string()
}

/// The EK certificate's DER (the first of [`EK_CERT_INDICES`] defined), or `None` when no EK certificate index exists.
fn read_ek_certificate(context: &mut Context, tcti: &str) -> DeviceResult<Option<Vec<u8>>> {
    let defined: Vec<u32> = nv::list(context)
        .map_err(|e| tpm_failed(tcti, "listing NV indices", e))?
        .iter()
        .map(|(public, _)| u32::from(public.nv_index()))
        .collect();
    for (index, algorithm) in EK_CERT_INDICES {
        if defined.contains(&index) {
            let der = ek::retrieve_ek_pubcert(context, algorithm)
                .map_err(|e| tpm_failed(tcti, "reading the EK certificate from NV", e))?;
            return Ok(Some(der));
        }
    }
    Ok(None)
}

fn read_bundle(path: &Path) -> DeviceResult<Vec<X509>> {
    let pem = std::fs::read(path).map_err(|e| {
        DeviceError::config(format!("cannot read EK CA bundle {}: {e}", path.display()))
            .with_hint("check ek_ca_bundle of the device's tpm entry in the inventory")
    })?;
    let certs = X509::stack_from_pem(&pem).map_err(|e| {
        DeviceError::config(format!(
            "EK CA bundle {} is not PEM certificates: {e}",
            path.display()
        ))
    })?;
    if certs.is_empty() {
        return Err(DeviceError::config(format!(
            "EK CA bundle {} holds no certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// Verifies the certificate's signature chain up to a certificate of the bundle.
/// Every bundle certificate is a trust anchor, so a bundle of the TPM vendor's
/// intermediate CAs works as well as one with their roots. Without a bundle only
/// presence and parsing are checked.
fn check_chain(der: &[u8], bundle: Option<&[X509]>) -> EkCertificate {
    let cert = match X509::from_der(der) {
        Ok(cert) => cert,
        Err(e) => {
            return EkCertificate::Untrusted {
                issuer: String::new(),
                reason: format!("the EK certificate in NV is not valid X.509 DER: {e}"),
            };
        }
    };
    let issuer = name_text(cert.issuer_name());
    let Some(bundle) = bundle else {
        return EkCertificate::Valid { issuer };
    };
    let verdict = (|| -> Result<Result<(), String>, openssl::error::ErrorStack> {
        let mut store = X509StoreBuilder::new()?;
        for ca in bundle {
            store.add_cert(ca.clone())?;
        }
        store.set_flags(X509VerifyFlags::PARTIAL_CHAIN)?;
        let store = store.build();
        let chain = openssl::stack::Stack::new()?;
        let mut context = X509StoreContext::new()?;
        context.init(&store, &cert, &chain, |c| {
            Ok(if c.verify_cert()? {
                Ok(())
            } else {
                Err(c.error().error_string().to_string())
            })
        })
    })();
    match verdict {
        Ok(Ok(())) => EkCertificate::Valid { issuer },
        Ok(Err(reason)) => EkCertificate::Untrusted { issuer, reason },
        Err(e) => EkCertificate::Untrusted {
            issuer,
            reason: format!("verification could not run: {e}"),
        },
    }
}

/// `CN=..., O=...` for the report.
fn name_text(name: &X509NameRef) -> String {
    name.entries()
        .map(|entry| {
            let key = entry.object().nid().short_name().unwrap_or("?");
            let value = entry.data().to_string().unwrap_or_else(|_| "?".into());
            format!("{key}={value}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Creates the EK and an AK under it, quotes the boot PCRs over `nonce`, and checks the
/// quote as a remote verifier would: the nonce must be the one we sent, and the
/// signature must verify with the AK's public key outside the TPM.
fn quote_and_verify(context: &mut Context, tcti: &str, nonce: &[u8]) -> DeviceResult<()> {
    let ek = ek::create_ek_object(context, AsymmetricAlgorithm::Rsa, None)
        .map_err(|e| tpm_failed(tcti, "creating the EK", e))?;
    let result = with_ak(context, tcti, ek, nonce);
    let _ = context.flush_context(ek.into());
    result
}

fn with_ak(context: &mut Context, tcti: &str, ek: KeyHandle, nonce: &[u8]) -> DeviceResult<()> {
    let created = ak::create_ak(
        context,
        ek,
        HashingAlgorithm::Sha256,
        SignatureSchemeAlgorithm::RsaSsa,
        None,
        None,
    )
    .map_err(|e| tpm_failed(tcti, "creating the AK", e))?;
    let ak_public = created.out_public.clone();
    let ak = ak::load_ak(context, ek, None, created.out_private, created.out_public)
        .map_err(|e| tpm_failed(tcti, "loading the AK", e))?;
    let result = quote(context, tcti, ak, nonce)
        .and_then(|(attest, signature)| verify_quote(&ak_public, &attest, &signature, nonce));
    let _ = context.flush_context(ak.into());
    result
}

fn quote(
    context: &mut Context,
    tcti: &str,
    ak: KeyHandle,
    nonce: &[u8],
) -> DeviceResult<(tss_esapi::structures::Attest, Signature)> {
    let failed = |e| tpm_failed(tcti, "quoting the PCRs", e);
    let pcrs = PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &QUOTED_PCRS)
        .build()
        .map_err(failed)?;
    let nonce = Data::try_from(nonce.to_vec()).map_err(failed)?;
    context
        .execute_with_nullauth_session(|ctx| ctx.quote(ak, nonce, SignatureScheme::Null, pcrs))
        .map_err(failed)
}

/// Checks a quote as a remote verifier: it must be a quote, carry `nonce` as its extra
/// data, and its RSASSA-SHA256 signature must verify with `ak_public` (checked with
/// OpenSSL, not by the TPM that produced it).
pub fn verify_quote(
    ak_public: &Public,
    attest: &tss_esapi::structures::Attest,
    signature: &Signature,
    nonce: &[u8],
) -> DeviceResult<()> {
    let refuse = |why: String| {
        DeviceError::product(format!("TPM quote refused: {why}"))
            .with_hint("the TPM's attestation cannot be trusted; Autopilot pre-provisioning will fail the same way")
    };
    if attest.extra_data().value() != nonce {
        return Err(refuse(
            "it does not carry the nonce we sent (a replayed or forged quote)".into(),
        ));
    }
    if !matches!(attest.attested(), AttestInfo::Quote { .. }) {
        return Err(refuse("the attestation is not a quote".into()));
    }
    let Signature::RsaSsa(rsa) = signature else {
        return Err(refuse(format!("unexpected signature scheme {signature:?}")));
    };
    if rsa.hashing_algorithm() != HashingAlgorithm::Sha256 {
        return Err(refuse("the signature is not over SHA-256".into()));
    }
    let Public::Rsa {
        parameters, unique, ..
    } = ak_public
    else {
        return Err(refuse("the AK is not an RSA key".into()));
    };
    let signed = attest
        .marshall()
        .map_err(|e| refuse(format!("cannot encode the attestation: {e}")))?;
    // An exponent of 0 in a TPM public area means the default, 65537.
    let exponent = match parameters.exponent().value() {
        0 => 65537,
        e => e,
    };
    let verified = (|| -> Result<bool, openssl::error::ErrorStack> {
        let key = openssl::rsa::Rsa::from_public_components(
            openssl::bn::BigNum::from_slice(unique.value())?,
            openssl::bn::BigNum::from_u32(exponent)?,
        )?;
        let key = openssl::pkey::PKey::from_rsa(key)?;
        let mut verifier = openssl::sign::Verifier::new(MessageDigest::sha256(), &key)?;
        verifier.update(&signed)?;
        verifier.verify(rsa.signature().value())
    })()
    .map_err(|e| refuse(format!("signature check failed to run: {e}")))?;
    if verified {
        Ok(())
    } else {
        Err(refuse(
            "its signature does not verify with the AK public key".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_char_properties_are_decoded_and_trimmed() {
        assert_eq!(four_chars(u32::from_be_bytes(*b"2.0\0")), "2.0");
        assert_eq!(four_chars(u32::from_be_bytes(*b"IBM ")), "IBM");
        assert_eq!(four_chars(u32::from_be_bytes(*b"IFX\0")), "IFX");
    }

    #[test]
    fn garbage_certificate_is_untrusted_not_a_panic() {
        match check_chain(b"\x30\x03\x02\x01", None) {
            EkCertificate::Untrusted { reason, .. } => {
                assert!(reason.contains("X.509"), "{reason}")
            }
            other => panic!("expected Untrusted, got {other:?}"),
        }
    }
}
