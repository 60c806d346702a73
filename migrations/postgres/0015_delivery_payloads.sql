-- Postgres dialect of 0015_delivery_payloads (sqlite/0015_delivery_payloads.sql is the twin).
-- A delivery's payload never changes, but its row does (claimed, then
-- matched); the payload has a table of its own, written once, and the row
-- that changes is small. (Postgres already kept large payloads out of line;
-- the schema is the same on both databases.)
create table delivery_payloads (
    id uuid primary key references deliveries (id) on delete cascade,
    payload text not null
);
insert into delivery_payloads (id, payload) select id, payload from deliveries;
alter table deliveries drop column payload;
