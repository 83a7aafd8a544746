//! Link settings and routes for the WireGuard interface, over rtnetlink: bring the link up
//! with the planned MTU and make the routes through it equal to the plan (only the
//! difference is added or deleted, so a restart re-converges without churn).

use std::collections::BTreeSet;
use std::net::IpAddr;

use futures_util::TryStreamExt as _;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::link::{LinkAttribute, LinkFlags};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::plan::{Cidr, diff_routes};

/// Errors talking to the kernel over rtnetlink.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// The netlink socket could not be opened.
    #[error("open rtnetlink socket")]
    Connect(#[source] std::io::Error),
    /// The interface does not exist.
    #[error("interface {0}: not found")]
    NoSuchLink(String),
    /// A route message could not be built (a prefix the kernel would reject).
    #[error("route: {0}")]
    Invalid(String),
    /// A netlink request failed.
    #[error("{what}")]
    Netlink {
        /// The request, e.g. `add route 10.244.2.0/24 dev idd1 table 254`.
        what: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
}

/// What [`Netlink::apply_routes`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteReport {
    /// Routes added.
    pub added: Vec<Cidr>,
    /// Routes deleted.
    pub removed: Vec<Cidr>,
    /// Whether link state (up / MTU) was changed.
    pub link_changed: bool,
}

/// An rtnetlink connection in the current network namespace. Needs a Tokio runtime.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a connection and spawns its driver task on the current Tokio runtime.
    ///
    /// # Errors
    /// When the netlink socket cannot be opened.
    pub fn connect() -> Result<Self, RouteError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(RouteError::Connect)?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// The underlying handle.
    #[must_use]
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Index, MTU and up-flag of interface `name`.
    ///
    /// # Errors
    /// When the link does not exist or the request fails.
    pub async fn link(&self, name: &str) -> Result<(u32, Option<u32>, bool), RouteError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        let msg = match links.try_next().await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(RouteError::NoSuchLink(name.to_owned())),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {
                return Err(RouteError::NoSuchLink(name.to_owned()));
            }
            Err(source) => {
                return Err(RouteError::Netlink {
                    what: format!("get link {name}"),
                    source,
                });
            }
        };
        let mtu = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        });
        Ok((
            msg.header.index,
            mtu,
            msg.header.flags.contains(LinkFlags::Up),
        ))
    }

    /// Brings `name` up with MTU `mtu`, changing only what differs. Returns whether
    /// anything changed.
    ///
    /// # Errors
    /// When the link does not exist or the request fails.
    pub async fn ensure_link(&self, name: &str, mtu: u32) -> Result<bool, RouteError> {
        let (index, have_mtu, up) = self.link(name).await?;
        if up && have_mtu == Some(mtu) {
            return Ok(false);
        }
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
            .execute()
            .await
            .map_err(|source| RouteError::Netlink {
                what: format!("set link {name} up mtu {mtu}"),
                source,
            })?;
        Ok(true)
    }

    async fn dump(&self, family: AddressFamily) -> Result<Vec<RouteMessage>, RouteError> {
        let mut req = RouteMessageBuilder::<IpAddr>::new().build();
        req.header.address_family = family;
        self.handle
            .route()
            .get(req)
            .execute()
            .try_collect()
            .await
            .map_err(|source| RouteError::Netlink {
                what: "dump routes".into(),
                source,
            })
    }

    /// The prefixes routed through interface `index` in `table`.
    ///
    /// # Errors
    /// When the dump fails.
    pub async fn routes(&self, index: u32, table: u32) -> Result<BTreeSet<Cidr>, RouteError> {
        let mut out = BTreeSet::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            for r in self.dump(family).await? {
                let t = r
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        RouteAttribute::Table(t) => Some(*t),
                        _ => None,
                    })
                    .unwrap_or(u32::from(r.header.table));
                let oif = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                });
                if t != table || oif != Some(index) {
                    continue;
                }
                let dst = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
                    RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
                    _ => None,
                });
                let dst = match (dst, family) {
                    (Some(d), _) => d,
                    (None, AddressFamily::Inet6) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                    (None, _) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                };
                // IPv6 link-local and multicast routes the kernel adds to every link are not ours.
                if let IpAddr::V6(v6) = dst {
                    let s = v6.segments()[0];
                    if s & 0xffc0 == 0xfe80 || s & 0xff00 == 0xff00 {
                        continue;
                    }
                }
                if let Ok(c) = Cidr::new(dst, r.header.destination_prefix_length) {
                    out.insert(c);
                }
            }
        }
        Ok(out)
    }

    fn route_msg(cidr: Cidr, index: u32, table: u32) -> Result<RouteMessage, RouteError> {
        Ok(RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(cidr.addr(), cidr.prefix())
            .map_err(|e| RouteError::Invalid(e.to_string()))?
            .output_interface(index)
            .table_id(table)
            .build())
    }

    /// Makes the routes through interface `name` in `table` equal to `desired`: adds the
    /// missing ones, deletes the extra ones, leaves the rest alone.
    ///
    /// # Errors
    /// When the link does not exist or a request fails.
    pub async fn apply_routes(
        &self,
        name: &str,
        table: u32,
        desired: &BTreeSet<Cidr>,
    ) -> Result<RouteReport, RouteError> {
        let (index, _, _) = self.link(name).await?;
        let current = self.routes(index, table).await?;
        let (add, del) = diff_routes(&current, desired);
        // Add first, so there is never a moment without a route through the tunnel.
        for c in &add {
            self.handle
                .route()
                .add(Self::route_msg(*c, index, table)?)
                .replace()
                .execute()
                .await
                .map_err(|source| RouteError::Netlink {
                    what: format!("add route {c} dev {name} table {table}"),
                    source,
                })?;
        }
        for c in &del {
            self.handle
                .route()
                .del(Self::route_msg(*c, index, table)?)
                .execute()
                .await
                .map_err(|source| RouteError::Netlink {
                    what: format!("delete route {c} dev {name} table {table}"),
                    source,
                })?;
        }
        Ok(RouteReport {
            added: add,
            removed: del,
            link_changed: false,
        })
    }
}
