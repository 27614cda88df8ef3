//! `shipping.book`: books a carrier for an order. Fails for good (`no_carrier`) when no
//! carrier serves the destination country, which makes a run undo what it already did.

use serde::{Deserialize, Serialize};
use squid_mesh_guest::{Action, ActionError, Context, log};

#[derive(Deserialize)]
struct Shipment {
    order_id: String,
    country: String,
}

#[derive(Serialize)]
struct Booked {
    order_id: String,
    carrier: String,
    tracking_number: String,
}

/// Countries each carrier serves.
const CARRIERS: [(&str, &[&str]); 2] = [
    ("postnl", &["NL", "BE", "LU"]),
    ("dhl", &["DE", "FR", "PT", "ES", "IT", "US"]),
];

struct BookShipment;

impl Action for BookShipment {
    type Input = Shipment;
    type Output = Booked;

    const NAME: Option<&'static str> = Some("shipping.book");

    fn run(ctx: &Context, shipment: Shipment) -> Result<Booked, ActionError> {
        let country = shipment.country.to_ascii_uppercase();
        let Some((carrier, _)) = CARRIERS
            .iter()
            .find(|(_, countries)| countries.contains(&country.as_str()))
        else {
            return Err(
                ActionError::fatal("no_carrier", format!("no carrier ships to {country}"))
                    .with_details(serde_json::json!({ "country": country })),
            );
        };
        log::info(&format!("booked {carrier} for {}", shipment.order_id));
        // Deterministic per attempt key, so a redelivered attempt books the same shipment.
        let hash = ctx
            .idempotency_key()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        Ok(Booked {
            order_id: shipment.order_id,
            carrier: (*carrier).to_owned(),
            tracking_number: format!(
                "{}{:012}",
                carrier[..2].to_ascii_uppercase(),
                hash % 1_000_000_000_000
            ),
        })
    }
}

squid_mesh_guest::export_action!(BookShipment);
