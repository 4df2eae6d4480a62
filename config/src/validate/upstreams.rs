//! `[upstreams.NAME]`: where routes forward to, with their TLS settings and timeouts.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::syntax::{is_host_name, parse_address};
use super::{Checker, key};
use crate::limits::{
    DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_READ_TIMEOUT_MS, MAX_CONNECT_TIMEOUT_MS,
    MAX_READ_TIMEOUT_MS,
};
use crate::model::Upstream;
use crate::schema::{Name, UpstreamFile};

impl Checker<'_> {
    pub(super) fn upstreams(
        &mut self,
        upstreams: BTreeMap<Name, UpstreamFile>,
    ) -> BTreeMap<String, Upstream> {
        let mut valid = BTreeMap::new();
        for (name, upstream) in upstreams {
            let path = format!("upstreams.{}", key(name.get_ref()));
            let UpstreamFile {
                address,
                tls,
                sni,
                connect_timeout_ms,
                read_timeout_ms,
            } = upstream;
            let mut ok = self.identifier(&path, &name, "upstream name");
            let host = match parse_address(address.get_ref()) {
                Ok(host) => Some(host),
                Err(message) => {
                    ok = false;
                    self.report(format!("{path}.address"), Some(address.span()), message);
                    None
                }
            };
            let sni = match sni {
                Some(sni) if !tls => {
                    ok = false;
                    self.report(
                        format!("{path}.sni"),
                        Some(sni.span()),
                        "is set but tls = false; set tls = true or remove sni".to_owned(),
                    );
                    None
                }
                Some(sni) => {
                    if !is_host_name(sni.get_ref()) {
                        ok = false;
                        self.report(
                            format!("{path}.sni"),
                            Some(sni.span()),
                            format!("{:?} is not a valid host name", sni.get_ref()),
                        );
                    }
                    Some(sni.into_inner().to_ascii_lowercase())
                }
                None if tls => host
                    .filter(|host| host.parse::<IpAddr>().is_err() && !host.starts_with('['))
                    .map(|host| host.to_ascii_lowercase()),
                None => None,
            };
            let connect_timeout_ms = self.duration_ms(
                &format!("{path}.connect_timeout_ms"),
                connect_timeout_ms.as_ref(),
                1,
                MAX_CONNECT_TIMEOUT_MS,
                DEFAULT_CONNECT_TIMEOUT_MS,
            );
            let read_timeout_ms = self.duration_ms(
                &format!("{path}.read_timeout_ms"),
                read_timeout_ms.as_ref(),
                1,
                MAX_READ_TIMEOUT_MS,
                DEFAULT_READ_TIMEOUT_MS,
            );
            if ok {
                let name = name.into_inner();
                let upstream = Upstream {
                    name: name.clone(),
                    address: address.into_inner(),
                    tls,
                    sni,
                    connect_timeout_ms,
                    read_timeout_ms,
                };
                valid.insert(name, upstream);
            }
        }
        valid
    }
}
