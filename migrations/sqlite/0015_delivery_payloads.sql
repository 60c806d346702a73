-- SQLite dialect of 0015_delivery_payloads (postgres/0015_delivery_payloads.sql is the twin).
-- A delivery's payload never changes, but its row does: the matcher claims
-- it and then records its result. SQLite writes a changed row whole, so each
-- of those updates wrote the 14 KB payload's overflow pages again (about
-- 60 KB of log per delivery, synced). The payload now has a table of its own,
-- written once; the delivery row that changes is small.
create table delivery_payloads (
    id text primary key not null references deliveries (id) on delete cascade,
    payload text not null
);
insert into delivery_payloads (id, payload) select id, payload from deliveries;
alter table deliveries drop column payload;
