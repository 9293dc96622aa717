-- creates: labels_current (view; one row per item, label set and annotator: the annotator's current answer)
-- reads:   labels (append-only event log: label, skip, retraction, adjudication)
-- params:  (none)
-- The current answer is the latest label or skip that no retraction cancels; kind tells which.
-- Adjudications are not answers of an annotator: labels_final reads them from labels.
create or replace view labels_current as
with
events as (
    select * from labels
),

retracted as (
    select distinct retracts as label_id
    from events
    where kind = 'retraction'
),

answers as (
    select e.*
    from events as e
    left join retracted as r on e.label_id = r.label_id
    where e.kind in ('label', 'skip') and r.label_id is null
),

ranked as (
    select
        *,
        row_number() over (
            partition by item_id, label_set, annotator
            order by created_at desc, label_id desc
        ) as answer_rank
    from answers
)

select
    item_id,
    label_set,
    annotator,
    kind,
    value,
    created_at,
    session_id,
    source,
    label_id
from ranked
where answer_rank = 1
