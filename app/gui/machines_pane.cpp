// SPDX-License-Identifier: MIT
#include "gui/machines_pane.h"

#include "session/app_session.h"

#include <QApplication>
#include <QClipboard>
#include <QDialog>
#include <QDialogButtonBox>
#include <QFontMetrics>
#include <QHBoxLayout>
#include <QHeaderView>
#include <QKeySequence>
#include <QLabel>
#include <QLineEdit>
#include <QMessageBox>
#include <QPainter>
#include <QPlainTextEdit>
#include <QPushButton>
#include <QShortcut>
#include <QSpinBox>
#include <QStyledItemDelegate>
#include <QTableView>
#include <QVBoxLayout>

namespace together::gui {

namespace {

// Memory as a bar: in use (grey), the planned shard stacked on it (accent; red when the two pass 90%), the
// donated limit as a tick; the text on top.
class MemoryDelegate : public QStyledItemDelegate {
public:
    using QStyledItemDelegate::QStyledItemDelegate;
    void paint(QPainter* p, const QStyleOptionViewItem& option, const QModelIndex& index) const override
    {
        const double total = index.data(MachinesModel::MemoryTotalRole).toULongLong();
        if (total <= 0) {
            QStyledItemDelegate::paint(p, option, index);
            return;
        }
        const double used = index.data(MachinesModel::MemoryUsedRole).toULongLong();
        const double planned = index.data(MachinesModel::PlannedRole).toULongLong();
        const double donated = index.data(MachinesModel::DonatedRole).toULongLong();
        p->save();
        if (option.state & QStyle::State_Selected)
            p->fillRect(option.rect, option.palette.highlight());
        QRect bar = option.rect.adjusted(3, 3, -3, -3);
        p->fillRect(bar, option.palette.base().color().darker(105));
        const int wUsed = static_cast<int>(bar.width() * std::min(1.0, used / total));
        const int wPlan = static_cast<int>(bar.width() * std::min(1.0 - std::min(1.0, used / total), planned / total));
        p->fillRect(QRect(bar.left(), bar.top(), wUsed, bar.height()), QColor(0xb0, 0xb0, 0xb0));
        const bool over = (used + planned) / total > 0.9;
        p->fillRect(QRect(bar.left() + wUsed, bar.top(), wPlan, bar.height()), over ? statusColor(Status::Error) : accentColor());
        if (donated > 0) {
            const int x = bar.left() + static_cast<int>(bar.width() * std::min(1.0, (used + donated) / total));
            p->setPen(QPen(Qt::black, 2));
            p->drawLine(x, bar.top(), x, bar.bottom());
        }
        p->setPen(option.palette.text().color());
        p->drawText(bar.adjusted(4, 0, -4, 0), Qt::AlignVCenter | Qt::AlignLeft, index.data().toString());
        p->restore();
    }
};

} // namespace

MachinesPane::MachinesPane(AppSession& session, QWidget* parent)
    : QWidget(parent)
    , m_session(session)
{
    auto* layout = new QVBoxLayout(this);
    m_offer = new QWidget;
    auto* offerLayout = new QHBoxLayout(m_offer);
    offerLayout->setContentsMargins(0, 0, 0, 0);
    auto* offerText = new QLabel("No workers found on the network yet. Try everything on this computer:");
    offerText->setWordWrap(true);
    auto* count = new QSpinBox;
    count->setRange(1, 8);
    count->setValue(2);
    count->setAccessibleName("Local workers");
    auto* start = new QPushButton("Start local workers");
    start->setAccessibleName("Start local workers");
    offerLayout->addWidget(offerText, 1);
    offerLayout->addWidget(count);
    offerLayout->addWidget(start);
    m_offer->hide();
    connect(start, &QPushButton::clicked, this, [this, count] {
        m_session.startLocalWorkers(count->value());
        m_offer->hide();
    });
    layout->addWidget(m_offer);

    m_table = new QTableView;
    m_table->setObjectName("machinesTable");
    m_table->setAccessibleName("Machines");
    m_table->setModel(&m_model);
    m_table->setItemDelegateForColumn(MachinesModel::Memory, new MemoryDelegate(m_table));
    m_table->setSelectionBehavior(QAbstractItemView::SelectRows);
    m_table->setSelectionMode(QAbstractItemView::SingleSelection);
    m_table->verticalHeader()->hide();
    m_table->horizontalHeader()->setStretchLastSection(true);
    m_table->horizontalHeader()->setSectionResizeMode(QHeaderView::Interactive);
    m_table->setColumnWidth(MachinesModel::Machine, 150);
    // The longest state without a reason fits whatever the font ("ready (calibrating)" was cut at a fixed 110
    // px); a reason, when there is one, is in the details line below.
    m_table->setColumnWidth(MachinesModel::State, m_table->fontMetrics().horizontalAdvance("ready (calibrating)") + 24);
    m_table->setColumnWidth(MachinesModel::Cores, 44);
    m_table->setColumnWidth(MachinesModel::Memory, 250);
    m_table->setColumnWidth(MachinesModel::Donated, 150);
    m_table->setColumnWidth(MachinesModel::Speed, 100);
    m_table->setWordWrap(false);
    layout->addWidget(m_table, 1);
    // Ctrl+C copies the selected machine's address, state and reason.
    auto* copy = new QShortcut(QKeySequence::Copy, m_table);
    connect(copy, &QShortcut::activated, this, [this] { QApplication::clipboard()->setText(selectedDetails()); });

    m_details = new QLabel("Select a machine to see its state and reason.");
    m_details->setObjectName("machineDetails");
    m_details->setTextInteractionFlags(Qt::TextSelectableByMouse | Qt::TextSelectableByKeyboard);
    m_details->setWordWrap(true);
    layout->addWidget(m_details);

    auto* row = new QHBoxLayout;
    auto* addressLabel = new QLabel("Address");
    m_address = new QLineEdit;
    m_address->setPlaceholderText("host:port (a worker broadcast does not reach)");
    m_address->setAccessibleName("Address");
    addressLabel->setBuddy(m_address);
    m_add = new QPushButton("Add");
    m_add->setAccessibleName("Add");
    m_log = new QPushButton("Log…");
    m_log->setAccessibleName("Log…");
    m_log->setEnabled(false);
    row->addWidget(addressLabel);
    row->addWidget(m_address, 1);
    row->addWidget(m_add);
    row->addWidget(m_log);
    layout->addLayout(row);

    connect(m_add, &QPushButton::clicked, this, &MachinesPane::addByAddress);
    connect(m_address, &QLineEdit::returnPressed, this, &MachinesPane::addByAddress);
    connect(m_log, &QPushButton::clicked, this, &MachinesPane::showLog);
    connect(m_table->selectionModel(), &QItemSelectionModel::selectionChanged, this, &MachinesPane::selectionChanged);
    connect(&m_model, &QAbstractItemModel::dataChanged, this, &MachinesPane::selectionChanged);
    connect(&session, &AppSession::workersReset, this, [this] { m_model.clear(); });
    connect(&session, &AppSession::workerUpdated, this, [this](const DiscoveredWorker& w) {
        m_model.update(w);
        m_offer->hide();
    });
}

void MachinesPane::offerLocalWorkers(bool show) { m_offer->setVisible(show && m_model.rowCount() == 0); }

QString MachinesPane::selectedDetails() const
{
    const auto rows = m_table->selectionModel()->selectedRows();
    if (rows.isEmpty())
        return {};
    const int row = rows.first().row();
    const DiscoveredWorker* w = m_model.worker(row);
    return QString::fromStdString(w->address) + " (" + QString::fromStdString(w->host) + "): " + m_model.stateText(row);
}

void MachinesPane::selectionChanged()
{
    const QString d = selectedDetails();
    m_log->setEnabled(!d.isEmpty());
    if (!d.isEmpty()) {
        const int row = m_table->selectionModel()->selectedRows().first().row();
        m_details->setText(QString("<span style='color:%1'>●</span> ").arg(statusColor(m_model.status(row)).name()) + d.toHtmlEscaped());
    }
}

void MachinesPane::addByAddress()
{
    const QString a = m_address->text().trimmed();
    if (a.isEmpty())
        return;
    try {
        m_session.addWorker(a);
        m_address->clear();
    } catch (const std::exception& e) {
        QMessageBox::warning(this, "Add a machine", e.what());
    }
}

void MachinesPane::showLog()
{
    const auto rows = m_table->selectionModel()->selectedRows();
    if (rows.isEmpty())
        return;
    const QString address = m_model.data(rows.first(), MachinesModel::AddressRole).toString();
    auto* dialog = new QDialog(this);
    dialog->setAttribute(Qt::WA_DeleteOnClose);
    dialog->setWindowTitle("Log of " + address);
    auto* l = new QVBoxLayout(dialog);
    auto* text = new QPlainTextEdit("reading the log…");
    text->setReadOnly(true);
    text->setAccessibleName("Log");
    text->setLineWrapMode(QPlainTextEdit::NoWrap);
    l->addWidget(text);
    auto* buttons = new QDialogButtonBox;
    auto* refresh = buttons->addButton("Refresh", QDialogButtonBox::ActionRole);
    buttons->addButton(QDialogButtonBox::Close);
    l->addWidget(buttons);
    connect(buttons, &QDialogButtonBox::rejected, dialog, &QDialog::close);
    connect(refresh, &QPushButton::clicked, dialog, [this, address] { m_session.fetchLog(address); });
    connect(&m_session, &AppSession::workerLog, dialog, [address, text](const QString& from, const QString& log) {
        if (from != address)
            return;
        text->setPlainText(log);
        text->moveCursor(QTextCursor::End);
    });
    dialog->resize(760, 420);
    dialog->show();
    m_session.fetchLog(address);
}

} // namespace together::gui
