// The data the scenarios start from: a contacts collection made on an
// Accord replica and synced to the relay.

import { Replica } from "./harness.mjs"

/** How many filler records `seedContacts` adds besides Ada. */
export const FILLERS = 60

/**
 * A relay with a contacts token and, synced from a replica: Ada (created
 * "add Ada" in London, then "moved to Paris") and FILLERS other people.
 */
export async function seedContacts(t, relay) {
  const token = await relay.token("contacts")
  const replica = await Replica.create(t)
  const ada = await replica.create(
    "contacts",
    { name: "Ada Lovelace", email: "ada@example.com", address: { city: "London" }, tags: ["math", "poetry"] },
    "add Ada",
  )
  await replica.put(ada, "address.city", "Paris", "moved to Paris")
  const cities = ["Paris", "London", "Lagos", "Lima", "Osaka"]
  const people = Array.from({ length: FILLERS }, (_, i) => ({
    name: `Person ${i + 1}`,
    email: `person${i + 1}@example.com`,
    address: { city: cities[i % cities.length] },
  }))
  await replica.importMany("contacts", people)
  await replica.sync(relay, token)
  return { token, replica, ada }
}
